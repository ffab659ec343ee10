pub mod fanout;
