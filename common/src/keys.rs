//! Every zenoh key expression shoal uses, and the only place that spells them. A cluster lives
//! under `shoal/<cluster>/`; a run under `shoal/<cluster>/run/<run id in hex>/`.
//!
//! | key | kind | who declares | what |
//! |---|---|---|---|
//! | `node/<node>/<hello hex>` | liveliness token | node | membership; the hex is the node's postcard hello, so the token carries its capabilities |
//! | `assign/<node>` | queryable | node | the manager's assignment (run id, partitions) |
//! | `doctor/<node>` | queryable | node | `shoal doctor`'s checkup; the reply is the node's health |
//! | `pi/<node>` | queryable | node | `shoal pi`'s share of the Monte Carlo samples |
//! | `manager/<run>` | liveliness token | manager | the run's manager is alive |
//! | `jobs` | queryable | job server | `shoal submit`, `jobs`, `cancel` and `fetch` from other hosts |
//! | `run/<run>/spec` | queryable | manager | mesh, parameters, element owners |
//! | `run/<run>/topology/<p>` | queryable | manager | owned and halo elements of partition p |
//! | `run/<run>/particles/<p>` | queryable | manager | p's initial particles |
//! | `run/<run>/field/<p>/<t>/<k>` | queryable | manager | piece k of p's field slice at time index t |
//! | `run/<run>/halo/<p>` | queryable | manager | values p lacks, on demand |
//! | `run/<run>/inbox/<to>/<from>` | subscriber | node | migrants from partition `from` |
//! | `run/<run>/sync/<p>` | queryable | manager | p's ready or step summary; the reply is the control |
//! | `run/<run>/snapshot/<p>` | queryable | manager | p's output view |

use crate::wire::Ident;

pub const ROOT: &str = "shoal";

/// Whether `s` can be one chunk of a key expression and a name on the command line: ASCII
/// letters, digits, `-`, `_` and `.`, not empty.
pub fn is_chunk(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

pub fn node_token(cluster: &Ident, node: &str, hello: &[u8]) -> String {
    format!("{ROOT}/{cluster}/node/{node}/{}", hex(hello))
}

/// Matches every node token of a cluster.
pub fn node_tokens(cluster: &Ident) -> String {
    format!("{ROOT}/{cluster}/node/*/*")
}

/// The node name and hello bytes of a node token key, if it is one.
pub fn parse_node_token(cluster: &Ident, key: &str) -> Option<(String, Vec<u8>)> {
    let rest = key.strip_prefix(&format!("{ROOT}/{cluster}/node/"))?;
    let (node, hello) = rest.split_once('/')?;
    Some((node.to_string(), unhex(hello)?))
}

pub fn assign(cluster: &Ident, node: &str) -> String {
    format!("{ROOT}/{cluster}/assign/{node}")
}

pub fn doctor(cluster: &Ident, node: &str) -> String {
    format!("{ROOT}/{cluster}/doctor/{node}")
}

pub fn pi(cluster: &Ident, node: &str) -> String {
    format!("{ROOT}/{cluster}/pi/{node}")
}

pub fn jobs(cluster: &Ident) -> String {
    format!("{ROOT}/{cluster}/jobs")
}

pub fn manager_token(cluster: &Ident, run: u64) -> String {
    format!("{ROOT}/{cluster}/manager/{run:016x}")
}

/// Keys of one run.
#[derive(Clone, Debug)]
pub struct RunKeys {
    prefix: String,
}

impl RunKeys {
    pub fn new(cluster: &Ident, run: u64) -> Self {
        RunKeys {
            prefix: format!("{ROOT}/{cluster}/run/{run:016x}"),
        }
    }
    pub fn spec(&self) -> String {
        format!("{}/spec", self.prefix)
    }
    pub fn topology(&self, p: u32) -> String {
        format!("{}/topology/{p}", self.prefix)
    }
    pub fn particles(&self, p: u32) -> String {
        format!("{}/particles/{p}", self.prefix)
    }
    pub fn field(&self, p: u32, time_index: u32, piece: u32) -> String {
        format!("{}/field/{p}/{time_index}/{piece}", self.prefix)
    }
    pub fn halo(&self, p: u32) -> String {
        format!("{}/halo/{p}", self.prefix)
    }
    pub fn inbox(&self, to: u32, from: u32) -> String {
        format!("{}/inbox/{to}/{from}", self.prefix)
    }
    /// Every inbox of partition `to`.
    pub fn inboxes(&self, to: u32) -> String {
        format!("{}/inbox/{to}/*", self.prefix)
    }
    pub fn sync(&self, p: u32) -> String {
        format!("{}/sync/{p}", self.prefix)
    }
    pub fn snapshot(&self, p: u32) -> String {
        format!("{}/snapshot/{p}", self.prefix)
    }
    /// `what` (such as `field/*/*/*`) under the run, for the manager's queryables.
    pub fn all(&self, what: &str) -> String {
        format!("{}/{what}", self.prefix)
    }
    /// The numbers after `<run>/<what>/` in `key`, if it has that shape.
    pub fn numbers(&self, what: &str, key: &str) -> Option<Vec<u32>> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let rest = rest.strip_prefix(what)?.strip_prefix('/')?;
        rest.split('/').map(|n| n.parse().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ident;

    #[test]
    fn keys_round_trip_and_refuse_what_is_not_theirs() {
        let c = ident("station").unwrap();
        let k = node_token(&c, "pi-1", &[0, 0xab, 7]);
        assert_eq!(k, "shoal/station/node/pi-1/00ab07");
        assert_eq!(
            parse_node_token(&c, &k),
            Some(("pi-1".to_string(), vec![0, 0xab, 7]))
        );
        assert_eq!(parse_node_token(&c, "shoal/station/node/pi-1/0g"), None);
        assert_eq!(parse_node_token(&c, "shoal/other/node/pi-1/00"), None);
        let r = RunKeys::new(&c, 0xfeed);
        assert_eq!(
            r.inbox(3, 1),
            "shoal/station/run/000000000000feed/inbox/3/1"
        );
        assert_eq!(r.numbers("inbox", &r.inbox(3, 1)), Some(vec![3, 1]));
        assert_eq!(r.numbers("field", &r.field(2, 40, 3)), Some(vec![2, 40, 3]));
        assert_eq!(r.numbers("field", &r.inbox(2, 40)), None);
        assert_eq!(r.numbers("sync", &format!("{}/x", r.all("sync"))), None);
        assert!(is_chunk("pi-4.local_2") && !is_chunk("a/b") && !is_chunk("") && !is_chunk("*"));
    }
}
