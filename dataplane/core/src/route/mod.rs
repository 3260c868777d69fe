//! Routing: which backend service serves a business command ([`Router`]),
//! and which of its game servers gets a request ([`Service::pick`]) under
//! the service's balancing policy.

mod ring;

use crate::config::{Balance, Config};
pub use ring::{stable_hash, HashRing};

/// Index of a backend link (one game server) in a worker's link table.
pub type LinkId = usize;

/// What a balancing decision may look at.
#[derive(Debug, Clone, Copy)]
pub struct PickKey<'a> {
    /// The session's user.
    pub user_id: &'a str,
    /// The envelope's routing key, if any.
    pub route_key: Option<&'a [u8]>,
}

/// One backend service and its game servers.
#[derive(Debug)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Links to its game servers.
    pub links: Vec<LinkId>,
    /// Balancing policy.
    pub balance: Balance,
    /// Sessions keep the server they first used.
    pub sticky: bool,
    weights: Vec<i64>,
    current: Vec<i64>,
    next: usize,
    ring: HashRing,
}

impl Service {
    /// A service over `links`, with the servers' addresses (hashed into the
    /// ring, so every gateway agrees on it) and weights.
    pub fn new(name: &str, balance: Balance, sticky: bool, servers: &[(LinkId, String, u32)]) -> Service {
        let ring = HashRing::new(servers.iter().map(|(_, addr, w)| (addr.as_str(), *w)));
        Service {
            name: name.into(),
            links: servers.iter().map(|s| s.0).collect(),
            balance,
            sticky,
            weights: servers.iter().map(|s| i64::from(s.2)).collect(),
            current: vec![0; servers.len()],
            next: 0,
            ring,
        }
    }

    /// The weight of one of its links (0 if not its own).
    pub fn weight(&self, link: LinkId) -> u32 {
        self.links.iter().position(|&l| l == link).map_or(0, |i| self.weights[i] as u32)
    }

    /// Picks a game server for a request among those for which `usable`
    /// holds; `load` gives a server's outstanding requests. `None` if no
    /// server is usable.
    pub fn pick(
        &mut self,
        key: PickKey<'_>,
        usable: impl Fn(LinkId) -> bool,
        load: impl Fn(LinkId) -> usize,
    ) -> Option<LinkId> {
        let n = self.links.len();
        let links = &self.links;
        let i = match self.balance {
            Balance::RoundRobin => {
                let i = (0..n).map(|k| (self.next + k) % n).find(|&i| usable(links[i]))?;
                self.next = (i + 1) % n;
                i
            }
            Balance::Weighted => {
                // Smooth weighted round-robin: spreads a server's share evenly.
                let mut best: Option<usize> = None;
                let mut total = 0;
                for i in (0..n).filter(|&i| usable(links[i])) {
                    self.current[i] += self.weights[i];
                    total += self.weights[i];
                    if best.is_none_or(|b| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let i = best?;
                self.current[i] -= total;
                i
            }
            Balance::LeastOutstanding => {
                let start = self.next;
                let i =
                    (0..n).map(|k| (start + k) % n).filter(|&i| usable(links[i])).min_by_key(|&i| load(links[i]))?;
                self.next = (start + 1) % n;
                i
            }
            Balance::HashUser => self.ring.lookup(stable_hash(key.user_id.as_bytes()), |i| usable(links[i]))?,
            Balance::HashRouteKey => {
                let bytes = key.route_key.unwrap_or(key.user_id.as_bytes());
                self.ring.lookup(stable_hash(bytes), |i| usable(links[i]))?
            }
        };
        Some(self.links[i])
    }
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
        Router::with_links(config, |_, _| {
            next_link += 1;
            next_link - 1
        })
    }

    /// Builds the router from a validated config, asking `link_of(service
    /// index, server address)` for each game server's link id.
    pub fn with_links(config: &Config, mut link_of: impl FnMut(usize, std::net::SocketAddr) -> LinkId) -> Router {
        let services = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let servers: Vec<_> = s
                    .servers
                    .iter()
                    .map(|srv| (link_of(i, srv.addr()), srv.addr().to_string(), srv.weight()))
                    .collect();
                Service::new(&s.name, s.balance, s.sticky, &servers)
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

    /// The index of a service by name.
    pub fn service_named(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// The services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// A service, mutably (to pick a server).
    pub fn service_mut(&mut self, i: usize) -> &mut Service {
        &mut self.services[i]
    }
}

#[cfg(test)]
mod tests;
