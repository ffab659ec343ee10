//! Which simulated device of a fleet behaves how: from the fractions that deny, time out or
//! answer garbage to the exact devices, deterministically (the same count and fractions give
//! the same devices every time), so the load tool knows which devices a group write must name
//! as failed without asking the fleet.

use std::fmt;

/// What one device of the fleet does when the gateway reads its ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Answers; its ACL lets ServerA Replace (a grant verifies).
    Normal,
    /// Answers; its ACL denies ServerA Replace (the owner is another server).
    Deny,
    /// Never answers within any verification deadline.
    Timeout,
    /// Answers 2.05 with bytes that are no valid ACL.
    Garbage,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Normal => "normal",
            Role::Deny => "deny",
            Role::Timeout => "timeout",
            Role::Garbage => "garbage",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fractions of a fleet (each 0..=1, together at most 1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fractions {
    pub deny: f64,
    pub timeout: f64,
    pub garbage: f64,
}

/// Device `i`'s id in a fleet (also its LwM2M endpoint name when it registers).
pub fn device_id(i: usize) -> String {
    format!("dev{i:05}")
}

/// The roles of a fleet of `count` devices, index = device number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    roles: Vec<Role>,
}

impl Plan {
    /// `round(fraction × count)` devices of each kind, spread evenly over the fleet
    /// (device `i` is special when `⌊(i+1)·s/N⌋ > ⌊i·s/N⌋` for `s` special devices in all),
    /// the special ones given deny, then timeout, then garbage, interleaved the same way.
    pub fn new(count: usize, fractions: Fractions) -> Result<Plan, String> {
        let Fractions {
            deny,
            timeout,
            garbage,
        } = fractions;
        for (name, f) in [("deny", deny), ("timeout", timeout), ("garbage", garbage)] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("--{name} {f}: a fraction is 0 to 1"));
            }
        }
        let of = |f: f64| (f * count as f64).round() as usize;
        let counts = [
            (Role::Deny, of(deny)),
            (Role::Timeout, of(timeout)),
            (Role::Garbage, of(garbage)),
        ];
        let special: usize = counts.iter().map(|(_, c)| c).sum();
        if special > count {
            return Err(format!(
                "--deny, --timeout and --garbage add up to {special} of {count} devices"
            ));
        }
        // The kinds in order of the special slots, themselves spread evenly: slot j takes the
        // kind whose share is furthest behind.
        let mut kinds = Vec::with_capacity(special);
        let mut given = [0usize; 3];
        for _ in 0..special {
            let (k, _) = counts
                .iter()
                .enumerate()
                .filter(|(k, (_, c))| given[*k] < *c)
                .map(|(k, (_, c))| (k, (given[k] as f64 + 0.5) / *c as f64))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .unwrap_or((0, 0.0));
            given[k] += 1;
            kinds.push(counts[k].0);
        }
        let mut roles = Vec::with_capacity(count);
        let mut next = kinds.into_iter();
        for i in 0..count {
            let is_special = special > 0 && (i + 1) * special / count > i * special / count;
            roles.push(if is_special {
                next.next().unwrap_or(Role::Normal)
            } else {
                Role::Normal
            });
        }
        Ok(Plan { roles })
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    pub fn role(&self, i: usize) -> Role {
        self.roles.get(i).copied().unwrap_or(Role::Normal)
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// How many devices have `role`.
    pub fn count(&self, role: Role) -> usize {
        self.roles.iter().filter(|r| **r == role).count()
    }

    /// The ids of the devices a group write must name as failed (every one that is not
    /// normal), in device order.
    pub fn failing_ids(&self) -> Vec<String> {
        self.roles
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != Role::Normal)
            .map(|(i, _)| device_id(i))
            .collect()
    }

    /// `100 normal` or `90 normal, 10 deny` (the kinds present).
    pub fn summary(&self) -> String {
        [Role::Normal, Role::Deny, Role::Timeout, Role::Garbage]
            .into_iter()
            .filter_map(|r| {
                let c = self.count(r);
                (c > 0).then(|| format!("{c} {r}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize, deny: f64, timeout: f64, garbage: f64) -> Plan {
        Plan::new(
            n,
            Fractions {
                deny,
                timeout,
                garbage,
            },
        )
        .unwrap()
    }

    #[test]
    fn no_fractions_make_every_device_normal() {
        let p = plan(7, 0.0, 0.0, 0.0);
        assert_eq!(p.len(), 7);
        assert!(p.roles().iter().all(|r| *r == Role::Normal));
        assert!(p.failing_ids().is_empty());
        assert_eq!(p.summary(), "7 normal");
    }

    #[test]
    fn one_in_five_denies_and_it_is_the_last_device() {
        let p = plan(5, 0.2, 0.0, 0.0);
        assert_eq!(p.count(Role::Deny), 1);
        assert_eq!(p.failing_ids(), vec!["dev00004".to_owned()]);
        assert_eq!(p.role(4), Role::Deny);
    }

    #[test]
    fn fractions_round_to_counts_and_spread_over_the_fleet() {
        let p = plan(1000, 0.1, 0.05, 0.02);
        assert_eq!(p.count(Role::Deny), 100);
        assert_eq!(p.count(Role::Timeout), 50);
        assert_eq!(p.count(Role::Garbage), 20);
        assert_eq!(p.count(Role::Normal), 830);
        assert_eq!(p.failing_ids().len(), 170);
        // Evenly spread: every tenth of the fleet holds its share of special devices (17).
        for chunk in p.roles().chunks(100) {
            let special = chunk.iter().filter(|r| **r != Role::Normal).count();
            assert_eq!(special, 17, "{chunk:?}");
        }
        // The kinds interleave: each appears in the first fifth of the special devices.
        let first: Vec<Role> = p
            .roles()
            .iter()
            .copied()
            .filter(|r| *r != Role::Normal)
            .take(34)
            .collect();
        for r in [Role::Deny, Role::Timeout, Role::Garbage] {
            assert!(first.contains(&r), "{r} missing from {first:?}");
        }
        assert_eq!(p.summary(), "830 normal, 100 deny, 50 timeout, 20 garbage");
    }

    #[test]
    fn the_plan_is_deterministic() {
        assert_eq!(plan(333, 0.3, 0.1, 0.1), plan(333, 0.3, 0.1, 0.1));
    }

    #[test]
    fn impossible_fractions_are_refused() {
        let f = |deny, timeout, garbage| Fractions {
            deny,
            timeout,
            garbage,
        };
        assert!(Plan::new(10, f(0.6, 0.5, 0.0)).is_err());
        assert!(Plan::new(10, f(-0.1, 0.0, 0.0)).is_err());
        assert!(Plan::new(10, f(1.5, 0.0, 0.0)).is_err());
        assert!(Plan::new(10, f(1.0, 0.0, 0.0)).is_ok());
    }

    #[test]
    fn every_device_fails_when_the_fractions_fill_the_fleet() {
        let p = plan(4, 0.5, 0.25, 0.25);
        assert_eq!(p.count(Role::Normal), 0);
        assert_eq!(p.failing_ids().len(), 4);
    }
}
