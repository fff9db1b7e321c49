//! The meshes built in this process, shared by its node agents and by the epochs of a run.

use anyhow::{anyhow, Result};
use shoal_common::mesh::is_element;
use shoal_common::Mesh;
use std::sync::Arc;

/// A mesh built in this process: its input's fingerprint and counts, the partitions whose pages
/// it keeps (`None`: whole), and the mesh while anyone holds it.
struct Built {
    key: (u64, usize, usize),
    parts: Option<Vec<u32>>,
    mesh: std::sync::Weak<Mesh>,
}
static BUILT: std::sync::Mutex<Vec<Built>> = std::sync::Mutex::new(Vec::new());

fn mesh_key(input: &shoal_common::MeshInput) -> (u64, usize, usize) {
    (input.fingerprint(), input.x.len(), input.nv.len())
}

/// Offers a mesh already built from `input` (the embedded manager's own) to the node agents of
/// this process, so that they use it instead of building another.
pub fn offer_mesh(input: &shoal_common::MeshInput, mesh: &Arc<Mesh>) {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.retain(|b| b.mesh.strong_count() > 0);
    built.push(Built {
        key: mesh_key(input),
        parts: None,
        mesh: Arc::downgrade(mesh),
    });
}

/// The mesh of `input`, built once per process: the in-process node agents of the embedded
/// default, and the epochs of one run, share it instead of each building (and holding) its own.
/// Building holds the lock, so agents that ask together wait for one build. A mesh built here
/// keeps its derived rows only for the pages of `partitions` and two rings around them
/// ([`Mesh::keep_only`]): the mesh offered whole by an embedded manager serves any partitions,
/// one built for other partitions is not reused.
pub(super) fn shared_mesh(
    input: shoal_common::MeshInput,
    part_of: &[u32],
    partitions: &[u32],
) -> Result<Arc<Mesh>> {
    let key = mesh_key(&input);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.retain(|b| b.mesh.strong_count() > 0);
    if let Some(m) = built
        .iter()
        .filter(|b| b.key == key && b.parts.as_deref().is_none_or(|p| p == partitions))
        .find_map(|b| b.mesh.upgrade())
    {
        return Ok(m);
    }
    let (mut mesh, _) = Mesh::build(input).map_err(|e| anyhow!("run mesh: {e}"))?;
    if part_of.len() == mesh.n_elements() {
        let mut keep: Vec<bool> = part_of.iter().map(|p| partitions.contains(p)).collect();
        for _ in 0..2 {
            let ring: Vec<usize> = (0..keep.len())
                .filter(|&e| !keep[e])
                .filter(|&e| {
                    mesh.nbe[e]
                        .iter()
                        .any(|&n| is_element(n) && keep[n as usize])
                })
                .collect();
            ring.into_iter().for_each(|e| keep[e] = true);
        }
        mesh.keep_only(&keep);
    }
    let mesh = Arc::new(mesh);
    built.push(Built {
        key,
        parts: Some(partitions.to_vec()),
        mesh: Arc::downgrade(&mesh),
    });
    crate::health::give_back_memory();
    Ok(mesh)
}
