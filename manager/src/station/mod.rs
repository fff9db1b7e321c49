//! The station's fleet as the manager sees it: who is in the cluster ([`membership`]: the
//! census of node tokens and the checks that admit a node), how each node is ([`fleet`]: the
//! doctor's check-ups and `shoal pi`), and the live status page that shows both ([`status`]).
//! A run (`run`) and the fleet commands (`tools`, the CLI) both use it; it uses `input` and
//! `output` and never `run` or `tools`.

pub mod fleet;
pub mod membership;
pub mod status;
