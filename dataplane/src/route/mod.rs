//! Routing: which backend service serves a business command, and which of
//! its game servers gets the next request.

use crate::config::{Balance, Config};

/// Index of a backend link (one game server) in the core's link table.
pub type LinkId = usize;

/// One backend service and its game servers.
#[derive(Debug)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Links to its game servers.
    pub links: Vec<LinkId>,
    /// Balancing policy.
    pub balance: Balance,
    next: usize,
}

/// The route table and the services.
#[derive(Debug, Default)]
pub struct Router {
    /// `(first, last, service)` sorted by `first`; ranges do not overlap.
    routes: Vec<(u32, u32, usize)>,
    services: Vec<Service>,
}

impl Router {
    /// Builds the router from a validated config; game server `j` of
    /// service `i` gets the link ids in order of appearance.
    pub fn new(config: &Config) -> Router {
        let mut next_link = 0;
        let services = config
            .services
            .iter()
            .map(|s| {
                let links = (next_link..next_link + s.servers.len()).collect();
                next_link += s.servers.len();
                Service { name: s.name.clone(), links, balance: s.balance, next: 0 }
            })
            .collect();
        let mut routes: Vec<_> = config
            .routes
            .iter()
            .map(|r| {
                let service = config.services.iter().position(|s| s.name == r.service).expect("validated");
                (r.commands[0], r.commands[1], service)
            })
            .collect();
        routes.sort_unstable();
        Router { routes, services }
    }

    /// The service of a business command, if routed.
    pub fn service_of(&self, cmd: u32) -> Option<usize> {
        let i = self.routes.partition_point(|r| r.0 <= cmd);
        let (_, last, service) = *self.routes.get(i.checked_sub(1)?)?;
        (cmd <= last).then_some(service)
    }

    /// The services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Picks a game server of `service` among those for which `usable`
    /// holds, or `None` if none is.
    pub fn pick(&mut self, service: usize, usable: impl Fn(LinkId) -> bool) -> Option<LinkId> {
        let s = &mut self.services[service];
        match s.balance {
            Balance::RoundRobin => {
                let n = s.links.len();
                (0..n).find_map(|k| {
                    let i = (s.next + k) % n;
                    usable(s.links[i]).then(|| {
                        s.next = (i + 1) % n;
                        s.links[i]
                    })
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let c = Config::parse(
            r#"
            [[listeners]]
            bind = "127.0.0.1:1"
            [auth]
            kind = "token"
            secret = "0123456789abcdef"
            [[services]]
            name = "a"
            servers = ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
            [[services]]
            name = "b"
            servers = ["127.0.0.1:5"]
            [[routes]]
            commands = [2000, 2999]
            service = "b"
            [[routes]]
            commands = [1000, 1000]
            service = "a"
            "#,
            "t",
        )
        .unwrap();
        Router::new(&c)
    }

    #[test]
    fn ranges_are_inclusive_and_gaps_unrouted() {
        let r = router();
        assert_eq!(r.service_of(999), None);
        assert_eq!(r.service_of(1000), Some(0));
        assert_eq!(r.service_of(1001), None);
        assert_eq!(r.service_of(2000), Some(1));
        assert_eq!(r.service_of(2999), Some(1));
        assert_eq!(r.service_of(3000), None);
        assert_eq!(r.services()[1].links, [3]);
    }

    #[test]
    fn round_robin_skips_unusable_servers() {
        let mut r = router();
        let picks: Vec<_> = (0..6).map(|_| r.pick(0, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..4).map(|_| r.pick(0, |l| l != 1).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(r.pick(0, |_| false), None);
    }
}
