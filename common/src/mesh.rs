//! Mesh geometry in a local metric frame: nodes, counter-clockwise elements, the neighbour opposite
//! each node, FVCOM's linear-reconstruction coefficients, sigma coordinates and a spatial index.
//! Built once from whatever a reader found; every quirk of the input (orientation, missing or
//! inconsistent `nbe`) is repaired here and reported as a [`MeshNote`].

use std::borrow::Cow;

use crate::paged::Paged;
use crate::projection::TransverseMercator;

/// `nbe` entry for an edge on land: particles reflect.
pub const LAND: u32 = u32::MAX;
/// `nbe` entry for an edge on the open boundary: particles leave the domain.
pub const OPEN: u32 = u32::MAX - 1;

/// Is this `nbe` entry a real neighbour (not a boundary)?
#[inline(always)]
pub fn is_element(n: u32) -> bool {
    n < OPEN
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum MeshError {
    #[error("mesh has no elements")]
    Empty,
    #[error("nv: element {element} refers to node {node}, but the mesh has {n_nodes} nodes")]
    NodeOutOfRange {
        element: usize,
        node: i64,
        n_nodes: usize,
    },
    #[error("nv: element {element} is degenerate (zero area)")]
    Degenerate { element: usize },
    #[error("nv: the edge between nodes {a} and {b} is shared by more than two elements")]
    NonManifold { a: u32, b: u32 },
    #[error("{name}: expected {expected} values, found {found}")]
    Shape {
        name: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{name}: value at index {index} is not finite")]
    NotFinite { name: &'static str, index: usize },
    #[error("open boundary node {node} is not a node of the mesh (it has {n_nodes})")]
    OpenNodeOutOfRange { node: u32, n_nodes: usize },
}

/// Something the builder repaired or assumed, for the user to read.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshNote {
    ReorientedElements(usize),
    NbeMissing,
    NbeInconsistent { first_bad_element: usize },
    ReconstructionComputed,
    OpenBoundaryEdges(usize),
}

impl std::fmt::Display for MeshNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshNote::ReorientedElements(n) => write!(f, "{n} elements were clockwise (FVCOM's order); reordered counter-clockwise"),
            MeshNote::NbeMissing => write!(f, "nbe is missing; element neighbours recomputed from nv"),
            MeshNote::NbeInconsistent { first_bad_element } => write!(f, "nbe disagrees with nv (first at element {first_bad_element}); element neighbours recomputed"),
            MeshNote::ReconstructionComputed => write!(f, "a1u/a2u not used from the file; linear reconstruction coefficients computed from the geometry"),
            MeshNote::OpenBoundaryEdges(n) => write!(f, "{n} boundary edges are open; the rest are land"),
        }
    }
}

/// Barycentric weights relative to the element centroid: `w_i = 1/3 + b_i dx + c_i dy`, where
/// `w_i` belongs to node `i` and vanishes on the edge opposite it (the edge shared with `nbe[i]`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct ElementGeometry {
    pub xc: f64,
    pub yc: f64,
    pub b: [f64; 3],
    pub c: [f64; 3],
}

impl ElementGeometry {
    #[inline(always)]
    pub fn weights(&self, x: f64, y: f64) -> [f64; 3] {
        let dx = x - self.xc;
        let dy = y - self.yc;
        [
            1.0 / 3.0 + self.b[0] * dx + self.c[0] * dy,
            1.0 / 3.0 + self.b[1] * dx + self.c[1] * dy,
            1.0 / 3.0 + self.b[2] * dx + self.c[2] * dy,
        ]
    }
}

/// Sigma coordinates, -1 at the bottom and 0 at the surface; layer 0 is the top layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Vertical {
    pub n_layers: usize,
    /// Layer centres per node, node-major (`node * n_layers + k`); one column for every node
    /// when `uniform`.
    pub siglay_node: Vec<f32>,
    /// Levels per node, node-major (`node * (n_layers + 1) + k`); one column when `uniform`.
    pub siglev_node: Vec<f32>,
    /// Every node has the same sigma column, held once.
    pub uniform: bool,
    /// Layer centres per element (mean of its nodes), `n_layers` per element; none held when
    /// `even_layers` (the kernel then finds layers by arithmetic). Read through
    /// [`Mesh::siglay_elem`].
    siglay_elem: Paged<f32>,
    /// When every element has the same evenly spaced layer centres: (first centre, spacing),
    /// so kernels find a layer by arithmetic instead of a search.
    pub even_layers: Option<(f64, f64)>,
    /// 1 / spacing of `even_layers`, so the kernel multiplies instead of dividing.
    pub inv_layer_step: f64,
}

impl Vertical {
    pub fn n_levels(&self) -> usize {
        self.n_layers + 1
    }

    /// Where node `n`'s column starts in `siglay_node` and `siglev_node`, in columns.
    #[inline(always)]
    pub fn column(&self, n: usize) -> usize {
        if self.uniform {
            0
        } else {
            n
        }
    }
}

/// What a reader (or the synthetic generator) hands to [`Mesh::build`]. Indices are 0-based.
/// It travels to the nodes in a run's specification: building it gives every node the very
/// mesh the manager built (same element order, same coefficients).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeshInput {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Bathymetry at nodes, metres, positive down.
    pub h: Vec<f32>,
    pub nv: Vec<[i64; 3]>,
    /// Neighbour opposite each node, negative for none.
    pub nbe: Option<Vec<[i64; 3]>>,
    /// FVCOM's a1u/a2u: [self, nbe0, nbe1, nbe2] per element, in the file's node order.
    pub a1u: Option<Vec<[f32; 4]>>,
    pub a2u: Option<Vec<[f32; 4]>>,
    /// Sigma layer centres, either one column (`n_layers`) or node-major (`n_nodes * n_layers`).
    pub siglay: Vec<f32>,
    pub siglev: Vec<f32>,
    pub n_layers: usize,
    pub open_boundary_nodes: Vec<u32>,
    pub projection: Option<TransverseMercator>,
}

impl MeshInput {
    /// A 64-bit hash of every value: two inputs with the same fingerprint build the same mesh
    /// (up to a hash collision, which the counts checked beside it make harder still).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let f64s = |h: &mut std::collections::hash_map::DefaultHasher, v: &[f64]| {
            v.len().hash(h);
            v.iter().for_each(|x| x.to_bits().hash(h));
        };
        let f32s = |h: &mut std::collections::hash_map::DefaultHasher, v: &[f32]| {
            v.len().hash(h);
            v.iter().for_each(|x| x.to_bits().hash(h));
        };
        f64s(&mut h, &self.x);
        f64s(&mut h, &self.y);
        f32s(&mut h, &self.h);
        self.nv.hash(&mut h);
        self.nbe.hash(&mut h);
        for c in [&self.a1u, &self.a2u] {
            c.is_some().hash(&mut h);
            for row in c.iter().flatten() {
                f32s(&mut h, row);
            }
        }
        f32s(&mut h, &self.siglay);
        f32s(&mut h, &self.siglev);
        self.n_layers.hash(&mut h);
        self.open_boundary_nodes.hash(&mut h);
        format!("{:?}", self.projection).hash(&mut h);
        h.finish()
    }
}

/// A uniform grid of buckets listing the elements whose bounding box meets each cell.
#[derive(Clone, Debug)]
struct GridIndex {
    x0: f64,
    y0: f64,
    cell: f64,
    nx: usize,
    ny: usize,
    start: Vec<u32>,
    items: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct Mesh {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub h: Vec<f32>,
    pub nv: Vec<[u32; 3]>,
    pub nbe: Vec<[u32; 3]>,
    // Derived per-element rows, whole or by pages ([`Mesh::keep_only`]); read through
    // [`Mesh::geom`], [`Mesh::h_elem`], [`Mesh::lsq`] and [`Mesh::sky`], which compute a row
    // not held again from `x`, `y`, `h` and `nv`.
    geometry: Paged<ElementGeometry>,
    /// Bathymetry at each element's three nodes, so kernels need no gather through `nv`.
    h_elem: Paged<[f32; 3]>,
    /// FVCOM's a1u and a2u per element.
    lsq: Paged<[[f32; 4]; 2]>,
    /// `lsq` came from the file: held whole, since it cannot be computed again.
    lsq_from_file: bool,
    pub vertical: Vertical,
    pub projection: Option<TransverseMercator>,
    /// The file's (FVCOM's) number of each element. Elements are stored in Z-order of their
    /// centroids so that elements near in space are near in memory; fields arrive and output
    /// leaves in file order through this map.
    pub file_element: Vec<u32>,
    /// For geographic meshes, each element centroid's sine and cosine of latitude and east
    /// longitude in radians: where the sun is seen from (larval migration). None otherwise.
    sky: Paged<[f32; 3]>,
    index: GridIndex,
}

/// Walking gives up after this many moves and asks the spatial index.
pub const MAX_WALK: usize = 64;

fn check_len(name: &'static str, v: usize, expected: usize) -> Result<(), MeshError> {
    if v != expected {
        Err(MeshError::Shape {
            name,
            expected,
            found: v,
        })
    } else {
        Ok(())
    }
}

fn check_finite<T: Copy + Into<f64>>(name: &'static str, v: &[T]) -> Result<(), MeshError> {
    match v.iter().position(|a| !(*a).into().is_finite()) {
        Some(index) => Err(MeshError::NotFinite { name, index }),
        None => Ok(()),
    }
}

impl Mesh {
    pub fn n_nodes(&self) -> usize {
        self.x.len()
    }
    pub fn n_elements(&self) -> usize {
        self.nv.len()
    }

    pub fn build(input: MeshInput) -> Result<(Mesh, Vec<MeshNote>), MeshError> {
        let n_nodes = input.x.len();
        let n_elements = input.nv.len();
        if n_elements == 0 {
            return Err(MeshError::Empty);
        }
        check_len("y", input.y.len(), n_nodes)?;
        check_len("h", input.h.len(), n_nodes)?;
        check_finite("x", &input.x)?;
        check_finite("y", &input.y)?;
        check_finite("h", &input.h)?;
        let mut notes = Vec::new();

        // Elements: range check, then counter-clockwise order (swap nodes 1 and 2, and with
        // them the matching nbe and a1u/a2u entries).
        let mut nv = Vec::with_capacity(n_elements);
        let mut flipped = vec![false; n_elements];
        for (e, tri) in input.nv.iter().enumerate() {
            let mut t = [0u32; 3];
            for i in 0..3 {
                if tri[i] < 0 || tri[i] as usize >= n_nodes {
                    return Err(MeshError::NodeOutOfRange {
                        element: e,
                        node: tri[i],
                        n_nodes,
                    });
                }
                t[i] = tri[i] as u32;
            }
            let area2 = signed_area2(&input.x, &input.y, t);
            if area2 == 0.0 || !area2.is_finite() {
                return Err(MeshError::Degenerate { element: e });
            }
            if area2 < 0.0 {
                t.swap(1, 2);
                flipped[e] = true;
            }
            nv.push(t);
        }
        let n_flipped = flipped.iter().filter(|f| **f).count();
        if n_flipped > 0 {
            notes.push(MeshNote::ReorientedElements(n_flipped));
        }

        let computed = neighbours_from_nv(&nv, n_nodes)?;
        let mut nbe = match &input.nbe {
            None => {
                notes.push(MeshNote::NbeMissing);
                computed
            }
            Some(given) => {
                let mut given_ccw = Vec::with_capacity(n_elements);
                let mut bad = given.len() != n_elements;
                if !bad {
                    for (e, g) in given.iter().enumerate() {
                        let mut g = *g;
                        if flipped[e] {
                            g.swap(1, 2);
                        }
                        let row = g.map(|n| {
                            if n < 0 || n as usize >= n_elements {
                                LAND
                            } else {
                                n as u32
                            }
                        });
                        given_ccw.push(row);
                    }
                }
                let first_bad = if bad {
                    Some(0)
                } else {
                    (0..n_elements).find(|&e| given_ccw[e] != computed[e])
                };
                if let Some(first_bad_element) = first_bad {
                    bad = true;
                    notes.push(MeshNote::NbeInconsistent { first_bad_element });
                }
                if bad {
                    computed
                } else {
                    given_ccw
                }
            }
        };

        // Open boundary: an edge on the boundary whose two nodes are both open-boundary nodes.
        if !input.open_boundary_nodes.is_empty() {
            let mut is_open = vec![false; n_nodes];
            for &n in &input.open_boundary_nodes {
                if n as usize >= n_nodes {
                    return Err(MeshError::OpenNodeOutOfRange { node: n, n_nodes });
                }
                is_open[n as usize] = true;
            }
            let mut n_open = 0;
            for (e, row) in nbe.iter_mut().enumerate() {
                for i in 0..3 {
                    let (a, b) = (nv[e][(i + 1) % 3], nv[e][(i + 2) % 3]);
                    if row[i] == LAND && is_open[a as usize] && is_open[b as usize] {
                        row[i] = OPEN;
                        n_open += 1;
                    }
                }
            }
            notes.push(MeshNote::OpenBoundaryEdges(n_open));
        }

        let geometry: Vec<ElementGeometry> = nv
            .iter()
            .map(|t| element_geometry(&input.x, &input.y, *t))
            .collect();
        let h_elem = nv.iter().map(|t| t.map(|n| input.h[n as usize])).collect();

        let use_file_coefficients = match (&input.a1u, &input.a2u) {
            (Some(a1), Some(a2)) => {
                a1.len() == n_elements
                    && a2.len() == n_elements
                    && a1.iter().chain(a2.iter()).flatten().all(|v| v.is_finite())
            }
            _ => false,
        };
        let lsq = if use_file_coefficients {
            let fix = |a: &Vec<[f32; 4]>| -> Vec<[f32; 4]> {
                a.iter()
                    .enumerate()
                    .map(|(e, r)| {
                        if flipped[e] {
                            [r[0], r[1], r[3], r[2]]
                        } else {
                            *r
                        }
                    })
                    .collect()
            };
            let (a1, a2) = (
                fix(input.a1u.as_ref().unwrap()),
                fix(input.a2u.as_ref().unwrap()),
            );
            a1.into_iter().zip(a2).map(|(a, b)| [a, b]).collect()
        } else {
            notes.push(MeshNote::ReconstructionComputed);
            (0..n_elements)
                .map(|e| lsq_of(&geometry[e], nbe[e], |n| geometry[n as usize]))
                .collect()
        };

        let vertical = build_vertical(&input, &nv, n_nodes)?;
        let index = GridIndex::build(&input.x, &input.y, &nv);
        let mesh = Mesh {
            x: input.x,
            y: input.y,
            h: input.h,
            nv,
            nbe,
            geometry: Paged::whole(geometry, 1),
            h_elem: Paged::whole(h_elem, 1),
            lsq: Paged::whole(lsq, 1),
            lsq_from_file: use_file_coefficients,
            vertical,
            projection: input.projection,
            file_element: (0..n_elements as u32).collect(),
            sky: Paged::none(),
            index,
        };
        let mut mesh = mesh.renumbered();
        if let Some(tm) = &mesh.projection {
            let sky = (0..n_elements).map(|e| sky_of(tm, &mesh.geom(e))).collect();
            mesh.sky = Paged::whole(sky, 1);
        }
        Ok((mesh, notes))
    }

    /// Element `e`'s centroid and barycentric gradients.
    #[inline(always)]
    pub fn geom(&self, e: usize) -> ElementGeometry {
        match self.geometry.get(e) {
            Some(g) => *g,
            None => self.geom_again(e),
        }
    }

    /// Element `e`'s centroid.
    #[inline(always)]
    pub fn centroid(&self, e: usize) -> (f64, f64) {
        match self.geometry.get(e) {
            Some(g) => (g.xc, g.yc),
            None => {
                let g = self.geom_again(e);
                (g.xc, g.yc)
            }
        }
    }

    /// The barycentric weights of (x, y) in element `e`: [`ElementGeometry::weights`].
    #[inline(always)]
    pub fn weights(&self, e: usize, x: f64, y: f64) -> [f64; 3] {
        match self.geometry.get(e) {
            Some(g) => g.weights(x, y),
            None => self.geom_again(e).weights(x, y),
        }
    }

    #[cold]
    #[inline(never)]
    fn geom_again(&self, e: usize) -> ElementGeometry {
        element_geometry(&self.x, &self.y, self.nv[e])
    }

    /// Bathymetry at element `e`'s three nodes.
    #[inline(always)]
    pub fn h_elem(&self, e: usize) -> [f32; 3] {
        match self.h_elem.get(e) {
            Some(h) => *h,
            None => self.nv[e].map(|n| self.h[n as usize]),
        }
    }

    /// Element `e`'s reconstruction weights (FVCOM's a1u, a2u) on [self, nbe0, nbe1, nbe2].
    #[inline]
    pub fn lsq(&self, e: usize) -> [[f32; 4]; 2] {
        match self.lsq.get(e) {
            Some(c) => *c,
            None => lsq_of(&self.geom(e), self.nbe[e], |n| self.geom(n as usize)),
        }
    }

    /// Every element's [`Mesh::lsq`] row, borrowed when all are held.
    pub fn lsq_rows(&self) -> Cow<'_, [[[f32; 4]; 2]]> {
        match self.lsq.as_whole() {
            Some(rows) => Cow::Borrowed(rows),
            None => Cow::Owned((0..self.n_elements()).map(|e| self.lsq(e)).collect()),
        }
    }

    /// Where the sun is seen from at element `e` (geographic meshes only): see the field.
    #[inline]
    pub fn sky(&self, e: usize) -> Option<[f32; 3]> {
        let tm = self.projection.as_ref()?;
        Some(match self.sky.get(e) {
            Some(s) => *s,
            None => sky_of(tm, &self.geom(e)),
        })
    }

    /// Element `e`'s layer centres (meshes whose layers are not even: see [`Vertical`]).
    #[inline]
    pub fn siglay_elem(&self, e: usize) -> Cow<'_, [f32]> {
        match self.vertical.siglay_elem.row(e) {
            Some(r) => Cow::Borrowed(r),
            None => Cow::Owned(siglay_of(&self.vertical, self.nv[e])),
        }
    }

    /// Releases the derived rows (geometry, bathymetry, reconstruction weights computed from the
    /// geometry, sun angles, layer centres) outside the pages of the elements with `keep[e]`
    /// set. Reads of any element still answer, with the very same values: a row not held is
    /// computed again. Coefficients read from the file stay whole.
    pub fn keep_only(&mut self, keep: &[bool]) {
        let mut pages = vec![false; self.n_elements().div_ceil(crate::paged::PAGE)];
        for (e, _) in keep.iter().enumerate().filter(|k| *k.1) {
            pages[e >> crate::paged::PAGE_BITS] = true;
        }
        self.geometry.keep_pages(&pages);
        self.h_elem.keep_pages(&pages);
        if !self.lsq_from_file {
            self.lsq.keep_pages(&pages);
        }
        self.sky.keep_pages(&pages);
        self.vertical.siglay_elem.keep_pages(&pages);
    }

    /// Pages of derived rows held, of all pages.
    pub fn pages_held(&self) -> (usize, usize) {
        self.geometry.pages()
    }

    /// Bytes of the mesh's arrays.
    pub fn heap_bytes(&self) -> usize {
        fn b<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        b(&self.x)
            + b(&self.y)
            + b(&self.h)
            + b(&self.nv)
            + b(&self.nbe)
            + b(&self.file_element)
            + self.geometry.heap_bytes()
            + self.h_elem.heap_bytes()
            + self.lsq.heap_bytes()
            + self.sky.heap_bytes()
            + self.vertical.siglay_elem.heap_bytes()
            + b(&self.vertical.siglay_node)
            + b(&self.vertical.siglev_node)
            + b(&self.index.start)
            + b(&self.index.items)
    }

    /// Reorders elements along a Morton (Z-order) curve of their centroids. Particles sorted by
    /// element then read field memory in spatially coherent order, and an RK stage one element
    /// away usually stays in cache.
    fn renumbered(self) -> Mesh {
        let ne = self.n_elements();
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        let geometry = self.geometry.as_whole().expect("a whole mesh");
        for g in geometry {
            x0 = x0.min(g.xc);
            x1 = x1.max(g.xc);
            y0 = y0.min(g.yc);
            y1 = y1.max(g.yc);
        }
        let span = (x1 - x0).max(y1 - y0).max(1e-9);
        let spread = |v: u32| -> u64 {
            let mut v = v as u64 & 0xffff;
            v = (v | (v << 8)) & 0x00ff_00ff;
            v = (v | (v << 4)) & 0x0f0f_0f0f;
            v = (v | (v << 2)) & 0x3333_3333;
            (v | (v << 1)) & 0x5555_5555
        };
        let mut order: Vec<(u64, u32)> = geometry
            .iter()
            .enumerate()
            .map(|(e, g)| {
                let qx = ((g.xc - x0) / span * 65535.0) as u32;
                let qy = ((g.yc - y0) / span * 65535.0) as u32;
                ((spread(qx) | (spread(qy) << 1)) << 32 | e as u64, e as u32)
            })
            .collect();
        order.sort_unstable();
        let old_of_new: Vec<u32> = order.iter().map(|o| o.1).collect();
        let mut new_of_old = vec![0u32; ne];
        for (new, &old) in old_of_new.iter().enumerate() {
            new_of_old[old as usize] = new as u32;
        }
        let take = |v: &[[u32; 3]]| -> Vec<[u32; 3]> {
            old_of_new.iter().map(|&o| v[o as usize]).collect()
        };
        let nv = take(&self.nv);
        let nbe = old_of_new
            .iter()
            .map(|&o| {
                self.nbe[o as usize].map(|n| {
                    if is_element(n) {
                        new_of_old[n as usize]
                    } else {
                        n
                    }
                })
            })
            .collect();
        let nl = self.vertical.n_layers;
        let mut vertical = self.vertical;
        let old_siglay = std::mem::take(&mut vertical.siglay_elem);
        if let Some(old) = old_siglay.as_whole().filter(|o| !o.is_empty()) {
            let rows = old_of_new
                .iter()
                .flat_map(|&o| old[o as usize * nl..(o as usize + 1) * nl].iter().copied())
                .collect();
            vertical.siglay_elem = Paged::whole(rows, nl);
        }
        let index = GridIndex::build(&self.x, &self.y, &nv);
        fn permuted<T: Copy + Default>(t: &Paged<T>, old_of_new: &[u32]) -> Paged<T> {
            let whole = t.as_whole().expect("a whole mesh");
            Paged::whole(old_of_new.iter().map(|&o| whole[o as usize]).collect(), 1)
        }
        Mesh {
            geometry: permuted(&self.geometry, &old_of_new),
            h_elem: permuted(&self.h_elem, &old_of_new),
            lsq: permuted(&self.lsq, &old_of_new),
            file_element: old_of_new,
            nv,
            nbe,
            vertical,
            index,
            ..self
        }
    }

    /// Finds the element containing (x, y): a walk from `hint` across the edge with the most
    /// negative weight, then the spatial index when the walk meets the boundary or wanders.
    pub fn locate(&self, x: f64, y: f64, hint: Option<u32>) -> Option<u32> {
        if let Some(start) = hint.filter(|&e| (e as usize) < self.n_elements()) {
            if let Walk::Found(e) = self.walk(start, x, y) {
                return Some(e);
            }
        }
        self.locate_indexed(x, y)
    }

    /// The neighbour walk alone: where it stops and why.
    #[inline]
    pub fn walk(&self, start: u32, x: f64, y: f64) -> Walk {
        self.walk_weights(start, x, y).0
    }

    /// The walk, with the point's barycentric weights in the last element visited.
    ///
    /// It never crosses back through the edge it entered by: having crossed that edge, the
    /// point is on this side of it, and a negative weight there is rounding (on a sliver the
    /// weights' rounding is far above the tolerance, since they grow as one over the element's
    /// height). Crossing back made the walk shuttle between the two elements until it gave up.
    #[inline(always)]
    pub fn walk_weights(&self, start: u32, x: f64, y: f64) -> (Walk, [f64; 3]) {
        self.walk_with(start, x, y, false)
    }

    /// The walk to a point just past a coastal vertex: where the coast is the most negative
    /// edge, it goes on across another edge the point also lies beyond, when that leads to an
    /// element (around a concave corner of the coast). Only the trace uses it: a stage's point
    /// beyond the coast is evaluated in the element where the plain walk meets the coast.
    pub fn walk_around_coast(&self, start: u32, x: f64, y: f64) -> Walk {
        self.walk_with(start, x, y, true).0
    }

    #[inline(always)]
    fn walk_with(&self, start: u32, x: f64, y: f64, around_coast: bool) -> (Walk, [f64; 3]) {
        // No element has this number; LAND and OPEN are the two above it.
        const NONE: u32 = u32::MAX - 2;
        let mut e = start;
        let mut came_from = NONE;
        let mut w = [0.0; 3];
        for _ in 0..MAX_WALK {
            w = self.weights(e as usize, x, y);
            let (mut i_min, mut w_min) = (0, w[0]);
            if w[1] < w_min {
                i_min = 1;
                w_min = w[1];
            }
            if w[2] < w_min {
                i_min = 2;
                w_min = w[2];
            }
            if w_min >= -1e-12 {
                return (Walk::Found(e), w);
            }
            let row = self.nbe[e as usize];
            let mut next = row[i_min];
            if next == came_from {
                // Back through the edge we came in by: rounding (see `walk_weights`). The
                // more negative of the other two edges, if the point lies beyond either.
                let (a, b) = ((i_min + 1) % 3, (i_min + 2) % 3);
                let k = if w[b] < w[a] { b } else { a };
                if w[k] >= -1e-12 {
                    return (Walk::Found(e), w);
                }
                i_min = k;
                next = row[k];
            }
            if !is_element(next) {
                // Where the coast is the most negative edge, the walk around it goes on
                // across another edge the point also lies beyond (a concave corner).
                let other = (0..3)
                    .filter(|&i| around_coast && i != i_min && w[i] < -1e-12)
                    .filter(|&i| is_element(row[i]) && row[i] != came_from)
                    .min_by(|&i, &j| w[i].total_cmp(&w[j]));
                match other {
                    Some(i) => next = row[i],
                    None => {
                        let edge = i_min as u8;
                        return (Walk::Boundary { element: e, edge }, w);
                    }
                }
            }
            came_from = e;
            e = next;
        }
        (Walk::GaveUp(e), w)
    }

    /// The edge of element `e` shared with element `neighbour` (3 when they share none).
    #[inline(always)]
    pub fn edge_to(&self, e: u32, neighbour: u32) -> usize {
        let row = self.nbe[e as usize];
        if row[0] == neighbour {
            0
        } else if row[1] == neighbour {
            1
        } else if row[2] == neighbour {
            2
        } else {
            3
        }
    }

    pub fn locate_indexed(&self, x: f64, y: f64) -> Option<u32> {
        let ix = self.index.cell_of(x, y)?;
        let (s, t) = (
            self.index.start[ix] as usize,
            self.index.start[ix + 1] as usize,
        );
        let mut best: Option<(u32, f64)> = None;
        for &e in &self.index.items[s..t] {
            let w = self.weights(e as usize, x, y);
            let m = w[0].min(w[1]).min(w[2]);
            if m >= -1e-12 {
                return Some(e);
            }
            if m > -1e-9 && best.is_none_or(|(_, b)| m > b) {
                best = Some((e, m));
            }
        }
        best.map(|(e, _)| e)
    }

    pub fn contains(&self, x: f64, y: f64) -> bool {
        self.locate_indexed(x, y).is_some()
    }

    pub fn element_area(&self, e: usize) -> f64 {
        0.5 * signed_area2(&self.x, &self.y, self.nv[e])
    }

    /// Boundary edges as node pairs with their kind, for plots and checks.
    pub fn boundary_edges(&self) -> Vec<(u32, u32, u32)> {
        let mut out = Vec::new();
        for (e, row) in self.nbe.iter().enumerate() {
            for (i, &kind) in row.iter().enumerate() {
                if !is_element(kind) {
                    out.push((self.nv[e][(i + 1) % 3], self.nv[e][(i + 2) % 3], kind));
                }
            }
        }
        out
    }

    /// Smallest element edge length, for choosing time steps and halos.
    pub fn smallest_edge(&self) -> f64 {
        let mut m = f64::INFINITY;
        for t in &self.nv {
            for i in 0..3 {
                let (a, b) = (t[i] as usize, t[(i + 1) % 3] as usize);
                m = m.min((self.x[a] - self.x[b]).hypot(self.y[a] - self.y[b]));
            }
        }
        m
    }

    /// The mesh's shape as it matters for tracking: its smallest angle, its slivers, and the
    /// elements whose velocity reconstruction leans on neighbours nearly in line.
    pub fn quality(&self) -> MeshQuality {
        let mut q = MeshQuality {
            smallest_angle_deg: 180.0,
            worst_element: 0,
            slivers: 0,
            ill_conditioned: 0,
        };
        for (e, t) in self.nv.iter().enumerate() {
            let p = t.map(|n| (self.x[n as usize], self.y[n as usize]));
            let mut smallest = 180.0f64;
            for i in 0..3 {
                let (a, b, c) = (p[i], p[(i + 1) % 3], p[(i + 2) % 3]);
                let (u, v) = ((b.0 - a.0, b.1 - a.1), (c.0 - a.0, c.1 - a.1));
                let angle = (u.0 * v.1 - u.1 * v.0)
                    .abs()
                    .atan2(u.0 * v.0 + u.1 * v.1)
                    .to_degrees();
                smallest = smallest.min(angle);
            }
            if smallest < q.smallest_angle_deg {
                q.smallest_angle_deg = smallest;
                q.worst_element = e as u32;
            }
            if smallest < MeshQuality::SLIVER_DEG {
                q.slivers += 1;
            }
            // The least-squares normal matrix of the offsets to the neighbours' centroids.
            let c = self.centroid(e);
            let (mut sxx, mut sxy, mut syy, mut n) = (0.0, 0.0, 0.0, 0);
            for &nb in &self.nbe[e] {
                if is_element(nb) {
                    let d = self.centroid(nb as usize);
                    let (dx, dy) = (d.0 - c.0, d.1 - c.1);
                    (sxx, sxy, syy, n) = (sxx + dx * dx, sxy + dx * dy, syy + dy * dy, n + 1);
                }
            }
            if n >= 2 {
                let (mean, half) = ((sxx + syy) / 2.0, ((sxx - syy) / 2.0).hypot(sxy));
                if mean - half <= (mean + half) / MeshQuality::CONDITION_LIMIT {
                    q.ill_conditioned += 1;
                }
            }
        }
        q
    }
}

/// [`Mesh::quality`]'s findings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeshQuality {
    /// The smallest interior angle of any element, degrees, and that element.
    pub smallest_angle_deg: f64,
    pub worst_element: u32,
    /// Elements with an angle under [`MeshQuality::SLIVER_DEG`].
    pub slivers: usize,
    /// Elements with two or three neighbours whose centroids lie so nearly in line that the
    /// least-squares gradient's normal matrix has a condition number over
    /// [`MeshQuality::CONDITION_LIMIT`].
    pub ill_conditioned: usize,
}

impl MeshQuality {
    pub const SLIVER_DEG: f64 = 10.0;
    pub const CONDITION_LIMIT: f64 = 100.0;
}

/// Moves node `far` onto the middle of edge (`a`, `b`), leaving it `ratio` of its distance
/// from the edge's line, so the triangle (`a`, `b`, `far`) keeps `ratio` of its area: a sliver,
/// for the meshes that test the tracker (`shoal synth --slivers`, the kernel's tests).
pub fn squash_onto_edge(x: &mut [f64], y: &mut [f64], a: usize, b: usize, far: usize, ratio: f64) {
    let (mx, my) = (0.5 * (x[a] + x[b]), 0.5 * (y[a] + y[b]));
    let (ex, ey) = (x[b] - x[a], y[b] - y[a]);
    let len = ex.hypot(ey);
    let (nx, ny) = (-ey / len, ex / len);
    // Signed: the unit normal times the height keeps `far` on its own side.
    let height = (x[far] - mx) * nx + (y[far] - my) * ny;
    x[far] = mx + ratio * height * nx;
    y[far] = my + ratio * height * ny;
}

/// Where a neighbour walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    Found(u32),
    /// The point lies beyond boundary edge `edge` (opposite node `edge`) of `element`.
    Boundary {
        element: u32,
        edge: u8,
    },
    GaveUp(u32),
}

fn signed_area2(x: &[f64], y: &[f64], t: [u32; 3]) -> f64 {
    let (a, b, c) = (t[0] as usize, t[1] as usize, t[2] as usize);
    (x[b] - x[a]) * (y[c] - y[a]) - (x[c] - x[a]) * (y[b] - y[a])
}

fn element_geometry(x: &[f64], y: &[f64], t: [u32; 3]) -> ElementGeometry {
    let p = t.map(|n| (x[n as usize], y[n as usize]));
    let xc = (p[0].0 + p[1].0 + p[2].0) / 3.0;
    let yc = (p[0].1 + p[1].1 + p[2].1) / 3.0;
    // Coordinates relative to the centroid keep full precision at UTM-sized offsets.
    let q = p.map(|(a, b)| (a - xc, b - yc));
    let area2 = (q[1].0 - q[0].0) * (q[2].1 - q[0].1) - (q[2].0 - q[0].0) * (q[1].1 - q[0].1);
    let mut g = ElementGeometry {
        xc,
        yc,
        ..Default::default()
    };
    for i in 0..3 {
        let (j, k) = ((i + 1) % 3, (i + 2) % 3);
        // w_i is the signed area of (p, p_j, p_k) over the element's area.
        g.b[i] = (q[j].1 - q[k].1) / area2;
        g.c[i] = (q[k].0 - q[j].0) / area2;
    }
    g
}

/// `nbe` from `nv`: the element across the edge opposite each node, or [`LAND`].
pub fn neighbours_from_nv(nv: &[[u32; 3]], n_nodes: usize) -> Result<Vec<[u32; 3]>, MeshError> {
    let _ = n_nodes;
    let mut edges: Vec<(u64, u32, u8)> = Vec::with_capacity(nv.len() * 3);
    for (e, t) in nv.iter().enumerate() {
        for i in 0..3 {
            let (a, b) = (t[(i + 1) % 3], t[(i + 2) % 3]);
            let key = ((a.min(b) as u64) << 32) | a.max(b) as u64;
            edges.push((key, e as u32, i as u8));
        }
    }
    edges.sort_unstable();
    let mut nbe = vec![[LAND; 3]; nv.len()];
    let mut i = 0;
    while i < edges.len() {
        let mut j = i + 1;
        while j < edges.len() && edges[j].0 == edges[i].0 {
            j += 1;
        }
        match j - i {
            1 => {}
            2 => {
                let (_, e0, i0) = edges[i];
                let (_, e1, i1) = edges[i + 1];
                nbe[e0 as usize][i0 as usize] = e1;
                nbe[e1 as usize][i1 as usize] = e0;
            }
            _ => {
                let key = edges[i].0;
                return Err(MeshError::NonManifold {
                    a: (key >> 32) as u32,
                    b: key as u32,
                });
            }
        }
        i = j;
    }
    Ok(nbe)
}

/// FVCOM-style linear reconstruction: the gradient of an element-centred field is a least-squares
/// fit over the element and its neighbours, written as weights on [self, nbe0, nbe1, nbe2] so that
/// `du/dx = sum(a1u[k] * u[k])`. Any linear field is reproduced exactly where two or more
/// neighbours exist; with fewer the gradient is zero (piecewise constant).
pub fn reconstruction_coefficients(
    geometry: &[ElementGeometry],
    nbe: &[[u32; 3]],
) -> (Vec<[f32; 4]>, Vec<[f32; 4]>) {
    (0..geometry.len())
        .map(|e| {
            let [a1, a2] = lsq_of(&geometry[e], nbe[e], |n| geometry[n as usize]);
            (a1, a2)
        })
        .unzip()
}

/// One element's row of [`reconstruction_coefficients`], `[a1u, a2u]`: `g` is its geometry,
/// `nb` its `nbe` row and `geom` gives a neighbour's geometry.
fn lsq_of(
    g: &ElementGeometry,
    nb: [u32; 3],
    geom: impl Fn(u32) -> ElementGeometry,
) -> [[f32; 4]; 2] {
    let mut out = [[0.0f32; 4]; 2];
    let mut d = [(0.0, 0.0); 3];
    let mut present = [false; 3];
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for k in 0..3 {
        let n = nb[k];
        if is_element(n) {
            let gn = geom(n);
            let (dx, dy) = (gn.xc - g.xc, gn.yc - g.yc);
            d[k] = (dx, dy);
            present[k] = true;
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
        }
    }
    let det = sxx * syy - sxy * sxy;
    if present.iter().filter(|p| **p).count() < 2 || det <= 1e-12 * (sxx * syy).max(1e-300) {
        return out;
    }
    let (mut s1, mut s2) = (0.0, 0.0);
    for k in 0..3 {
        if present[k] {
            let (dx, dy) = d[k];
            let c1 = (syy * dx - sxy * dy) / det;
            let c2 = (sxx * dy - sxy * dx) / det;
            out[0][k + 1] = c1 as f32;
            out[1][k + 1] = c2 as f32;
            s1 += c1;
            s2 += c2;
        }
    }
    out[0][0] = -s1 as f32;
    out[1][0] = -s2 as f32;
    out
}

/// Sine and cosine of latitude and east longitude (radians) at an element's centroid.
fn sky_of(tm: &TransverseMercator, g: &ElementGeometry) -> [f32; 3] {
    let (lon, lat) = tm.inverse(g.xc, g.yc);
    let phi = lat.to_radians();
    [phi.sin() as f32, phi.cos() as f32, lon.to_radians() as f32]
}

/// An element's layer centres: the mean of its three nodes' (the one arithmetic for building
/// and for computing a row again).
fn siglay_of(v: &Vertical, t: [u32; 3]) -> Vec<f32> {
    let nl = v.n_layers;
    (0..nl)
        .map(|k| {
            let s: f32 = t
                .iter()
                .map(|&n| v.siglay_node[v.column(n as usize) * nl + k])
                .sum();
            s / 3.0
        })
        .collect()
}

fn build_vertical(
    input: &MeshInput,
    nv: &[[u32; 3]],
    n_nodes: usize,
) -> Result<Vertical, MeshError> {
    let nl = input.n_layers.max(1);
    let expand = |name: &'static str, v: &[f32], per: usize| -> Result<Vec<f32>, MeshError> {
        if v.len() == per {
            Ok((0..n_nodes).flat_map(|_| v.iter().copied()).collect())
        } else if v.len() == per * n_nodes {
            // node-major already
            Ok(v.to_vec())
        } else {
            Err(MeshError::Shape {
                name,
                expected: per * n_nodes,
                found: v.len(),
            })
        }
    };
    let (siglay_node, siglev_node) = if input.siglay.is_empty() {
        // 2-D fields: one layer spanning the water column.
        let lay: Vec<f32> = (0..nl).map(|k| -((k as f32) + 0.5) / nl as f32).collect();
        let lev: Vec<f32> = (0..=nl).map(|k| -(k as f32) / nl as f32).collect();
        (expand("siglay", &lay, nl)?, expand("siglev", &lev, nl + 1)?)
    } else {
        check_finite("siglay", &input.siglay)?;
        check_finite("siglev", &input.siglev)?;
        (
            expand("siglay", &input.siglay, nl)?,
            expand("siglev", &input.siglev, nl + 1)?,
        )
    };
    let mut siglay_elem = Vec::with_capacity(nv.len() * nl);
    for t in nv {
        for k in 0..nl {
            let s: f32 = t.iter().map(|&n| siglay_node[n as usize * nl + k]).sum();
            siglay_elem.push(s / 3.0);
        }
    }
    let even_layers = even_spacing(&siglay_elem, nl);
    let siglay_elem = match even_layers {
        Some(_) => Paged::none(),
        None => Paged::whole(siglay_elem, nl),
    };
    let same = |v: &[f32], per: usize| v.chunks(per).all(|c| c == &v[..per]);
    let uniform = same(&siglay_node, nl) && same(&siglev_node, nl + 1);
    let (mut siglay_node, mut siglev_node) = (siglay_node, siglev_node);
    if uniform {
        siglay_node.truncate(nl);
        siglev_node.truncate(nl + 1);
        siglay_node.shrink_to_fit();
        siglev_node.shrink_to_fit();
    }
    Ok(Vertical {
        n_layers: nl,
        siglay_node,
        siglev_node,
        uniform,
        siglay_elem,
        even_layers,
        inv_layer_step: even_layers.map(|(_, step)| 1.0 / step).unwrap_or(0.0),
    })
}

fn even_spacing(siglay_elem: &[f32], nl: usize) -> Option<(f64, f64)> {
    if nl < 2 {
        return None;
    }
    let col = &siglay_elem[..nl];
    let (first, step) = (
        col[0] as f64,
        (col[nl - 1] as f64 - col[0] as f64) / (nl - 1) as f64,
    );
    let same = siglay_elem.chunks(nl).all(|c| c == col);
    let even = col
        .iter()
        .enumerate()
        .all(|(k, s)| (*s as f64 - (first + k as f64 * step)).abs() < 1e-6);
    (same && even && step < 0.0).then_some((first, step))
}

impl GridIndex {
    fn build(x: &[f64], y: &[f64], nv: &[[u32; 3]]) -> GridIndex {
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for t in nv {
            for &n in t {
                x0 = x0.min(x[n as usize]);
                x1 = x1.max(x[n as usize]);
                y0 = y0.min(y[n as usize]);
                y1 = y1.max(y[n as usize]);
            }
        }
        // About two elements per cell on average.
        let area = ((x1 - x0) * (y1 - y0)).max(1e-6);
        let cell = (2.0 * area / nv.len() as f64).sqrt().max(1e-6);
        let nx = (((x1 - x0) / cell).ceil() as usize).clamp(1, 1 << 14);
        let ny = (((y1 - y0) / cell).ceil() as usize).clamp(1, 1 << 14);
        let cell = ((x1 - x0) / nx as f64).max((y1 - y0) / ny as f64).max(1e-6);
        let cells_of = |t: &[u32; 3]| {
            let (mut a, mut b, mut c, mut d) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
            for &n in t {
                a = a.min(x[n as usize]);
                c = c.max(x[n as usize]);
                b = b.min(y[n as usize]);
                d = d.max(y[n as usize]);
            }
            let i0 = (((a - x0) / cell).floor() as usize).min(nx - 1);
            let i1 = (((c - x0) / cell).floor() as usize).min(nx - 1);
            let j0 = (((b - y0) / cell).floor() as usize).min(ny - 1);
            let j1 = (((d - y0) / cell).floor() as usize).min(ny - 1);
            (i0, i1, j0, j1)
        };
        let mut count = vec![0u32; nx * ny + 1];
        for t in nv {
            let (i0, i1, j0, j1) = cells_of(t);
            for j in j0..=j1 {
                for i in i0..=i1 {
                    count[j * nx + i + 1] += 1;
                }
            }
        }
        for i in 1..count.len() {
            count[i] += count[i - 1];
        }
        let start = count.clone();
        let mut fill = count;
        let mut items = vec![0u32; *start.last().unwrap() as usize];
        for (e, t) in nv.iter().enumerate() {
            let (i0, i1, j0, j1) = cells_of(t);
            for j in j0..=j1 {
                for i in i0..=i1 {
                    let c = j * nx + i;
                    items[fill[c] as usize] = e as u32;
                    fill[c] += 1;
                }
            }
        }
        GridIndex {
            x0,
            y0,
            cell,
            nx,
            ny,
            start,
            items,
        }
    }

    fn cell_of(&self, x: f64, y: f64) -> Option<usize> {
        let fx = (x - self.x0) / self.cell;
        let fy = (y - self.y0) / self.cell;
        let eps = 1e-9;
        if !(fx >= -eps && fy >= -eps) || fx > self.nx as f64 + eps || fy > self.ny as f64 + eps {
            return None;
        }
        let i = (fx.max(0.0) as usize).min(self.nx - 1);
        let j = (fy.max(0.0) as usize).min(self.ny - 1);
        Some(j * self.nx + i)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A structured triangulation of an nx by ny grid of squares, each split in two, clockwise
    /// as FVCOM writes it, at an optional offset.
    pub fn grid_mesh(nx: usize, ny: usize, dx: f64, x0: f64, y0: f64) -> MeshInput {
        let mut m = MeshInput::default();
        for j in 0..=ny {
            for i in 0..=nx {
                m.x.push(x0 + i as f64 * dx);
                m.y.push(y0 + j as f64 * dx);
                m.h.push(10.0);
            }
        }
        let id = |i: usize, j: usize| (j * (nx + 1) + i) as i64;
        for j in 0..ny {
            for i in 0..nx {
                m.nv.push([id(i, j), id(i, j + 1), id(i + 1, j)]);
                m.nv.push([id(i + 1, j), id(i, j + 1), id(i + 1, j + 1)]);
            }
        }
        m.n_layers = 1;
        m
    }

    #[test]
    fn a_mesh_keeping_some_pages_answers_for_every_element_with_the_same_bits() {
        let mut input = grid_mesh(40, 30, 100.0, 0.0, 0.0);
        let nn = input.x.len();
        // Uneven layers that differ from node to node, varied depths, a geographic frame.
        let nl = 3;
        input.n_layers = nl;
        input.siglay = (0..nn)
            .flat_map(|n| {
                let f = 0.1 + 0.01 * (n % 7) as f32;
                [-f, -0.5, -1.0 + f]
            })
            .collect();
        input.siglev = (0..nn)
            .flat_map(|n| [0.0, -0.2 - 0.01 * (n % 5) as f32, -0.7, -1.0])
            .collect();
        input.h = (0..nn).map(|n| 5.0 + (n % 11) as f32).collect();
        input.projection = Some(TransverseMercator::new(-122.4, 37.8));
        let (whole, _) = Mesh::build(input).unwrap();
        assert!(whole.vertical.even_layers.is_none());
        let ne = whole.n_elements();
        let mut part = whole.clone();
        let keep: Vec<bool> = (0..ne).map(|e| e % 700 < 150).collect();
        part.keep_only(&keep);
        let (held, pages) = part.pages_held();
        assert!(held > 0 && held < pages / 2, "{held} of {pages} pages held");
        assert!(part.heap_bytes() < whole.heap_bytes());
        let bits = |g: ElementGeometry| {
            [g.xc, g.yc, g.b[0], g.b[1], g.b[2], g.c[0], g.c[1], g.c[2]].map(f64::to_bits)
        };
        for e in 0..ne {
            assert_eq!(bits(part.geom(e)), bits(whole.geom(e)), "element {e}");
            assert_eq!(part.h_elem(e), whole.h_elem(e), "element {e}");
            assert_eq!(part.lsq(e), whole.lsq(e), "element {e}");
            assert_eq!(part.sky(e), whole.sky(e), "element {e}");
            assert!(whole.sky(e).is_some());
            assert_eq!(part.siglay_elem(e), whole.siglay_elem(e), "element {e}");
            assert_eq!(part.siglay_elem(e).len(), nl);
        }
    }

    #[test]
    fn clockwise_elements_are_reoriented_and_neighbours_found() {
        let (mesh, notes) = Mesh::build(grid_mesh(4, 3, 100.0, 0.0, 0.0)).unwrap();
        assert!(notes.contains(&MeshNote::ReorientedElements(24)));
        assert!(notes.contains(&MeshNote::NbeMissing));
        for e in 0..mesh.n_elements() {
            assert!(mesh.element_area(e) > 0.0);
            for i in 0..3 {
                let n = mesh.nbe[e][i];
                if is_element(n) {
                    assert!(mesh.nbe[n as usize].contains(&(e as u32)));
                }
            }
        }
        // A 4x3 grid has 2*(4+3) boundary edges.
        assert_eq!(mesh.boundary_edges().len(), 14);
    }

    #[test]
    fn inconsistent_nbe_is_recomputed_and_reported() {
        let mut input = grid_mesh(3, 3, 10.0, 0.0, 0.0);
        let (good, _) = Mesh::build(input.clone()).unwrap();
        // Give the builder the right nbe in the file's (clockwise) order, then spoil one entry.
        let ccw: Vec<[u32; 3]> = input
            .nv
            .iter()
            .map(|t| [t[0] as u32, t[2] as u32, t[1] as u32])
            .collect();
        let mut nbe: Vec<[i64; 3]> = neighbours_from_nv(&ccw, input.x.len())
            .unwrap()
            .iter()
            .map(|r| {
                let r = r.map(|n| if is_element(n) { n as i64 } else { -1 });
                [r[0], r[2], r[1]]
            })
            .collect();
        input.nbe = Some(nbe.clone());
        let (m, notes) = Mesh::build(input.clone()).unwrap();
        assert!(!notes
            .iter()
            .any(|n| matches!(n, MeshNote::NbeInconsistent { .. })));
        assert_eq!(m.nbe, good.nbe);
        nbe[4][0] = 0;
        input.nbe = Some(nbe);
        let (m, notes) = Mesh::build(input).unwrap();
        assert!(notes.contains(&MeshNote::NbeInconsistent {
            first_bad_element: 4
        }));
        assert_eq!(m.nbe, good.nbe);
    }

    #[test]
    fn reconstruction_reproduces_linear_fields_exactly() {
        let mut input = grid_mesh(6, 5, 250.0, 500_000.0, 4_000_000.0);
        // jitter interior nodes
        for (n, (x, y)) in input.x.iter_mut().zip(input.y.iter_mut()).enumerate() {
            let (i, j) = (n % 7, n / 7);
            if i > 0 && i < 6 && j > 0 && j < 5 {
                *x += 40.0 * ((n * 37 % 11) as f64 / 11.0 - 0.5);
                *y += 40.0 * ((n * 53 % 13) as f64 / 13.0 - 0.5);
            }
        }
        let (mesh, _) = Mesh::build(input).unwrap();
        let f = |x: f64, y: f64| 0.3 + 1e-3 * (x - 500_000.0) - 2e-3 * (y - 4_000_000.0);
        let u: Vec<f64> = (0..mesh.n_elements())
            .map(|e| mesh.geom(e))
            .map(|g| f(g.xc, g.yc))
            .collect();
        for e in 0..mesh.n_elements() {
            let nb = mesh.nbe[e];
            if nb.iter().filter(|n| is_element(**n)).count() < 2 {
                continue;
            }
            let val = |k: usize| {
                if k == 0 {
                    u[e]
                } else if is_element(nb[k - 1]) {
                    u[nb[k - 1] as usize]
                } else {
                    0.0
                }
            };
            let gx: f64 = (0..4).map(|k| mesh.lsq(e)[0][k] as f64 * val(k)).sum();
            let gy: f64 = (0..4).map(|k| mesh.lsq(e)[1][k] as f64 * val(k)).sum();
            assert!(
                (gx - 1e-3).abs() < 1e-8 && (gy + 2e-3).abs() < 1e-8,
                "element {e}: {gx} {gy}"
            );
        }
    }

    #[test]
    fn locate_walks_and_falls_back_to_the_index() {
        let (mesh, _) = Mesh::build(grid_mesh(20, 20, 10.0, 1e6, 5e6)).unwrap();
        for k in 0..500 {
            let x = 1e6 + 0.5 + (k * 7919 % 1990) as f64 / 10.0;
            let y = 5e6 + 0.5 + (k * 104729 % 1990) as f64 / 10.0;
            let a = mesh.locate(x, y, Some(0)).unwrap();
            let b = mesh.locate_indexed(x, y).unwrap();
            let w = mesh.weights(a as usize, x, y);
            assert!(w.iter().all(|v| *v >= -1e-9));
            let wb = mesh.weights(b as usize, x, y);
            assert!(wb.iter().all(|v| *v >= -1e-9));
        }
        assert_eq!(mesh.locate(1e6 - 1.0, 5e6 + 50.0, Some(3)), None);
        assert_eq!(mesh.locate(1e6 + 500.0, 5e6 + 50.0, None), None);
    }

    #[test]
    fn bad_input_is_named() {
        let mut input = grid_mesh(2, 2, 1.0, 0.0, 0.0);
        input.nv[3][1] = 99;
        assert!(matches!(
            Mesh::build(input).unwrap_err(),
            MeshError::NodeOutOfRange {
                element: 3,
                node: 99,
                ..
            }
        ));
        let mut input = grid_mesh(2, 2, 1.0, 0.0, 0.0);
        input.h[2] = f32::NAN;
        assert_eq!(
            Mesh::build(input).unwrap_err(),
            MeshError::NotFinite {
                name: "h",
                index: 2
            }
        );
    }

    #[test]
    fn open_boundary_edges_are_typed() {
        let mut input = grid_mesh(3, 3, 1.0, 0.0, 0.0);
        // the east side: i == 3
        input.open_boundary_nodes = (0..4).map(|j| (j * 4 + 3) as u32).collect();
        let (mesh, notes) = Mesh::build(input).unwrap();
        assert!(notes.contains(&MeshNote::OpenBoundaryEdges(3)));
        let open: Vec<_> = mesh
            .boundary_edges()
            .into_iter()
            .filter(|e| e.2 == OPEN)
            .collect();
        assert_eq!(open.len(), 3);
        for (a, b, _) in open {
            assert_eq!(mesh.x[a as usize], 3.0);
            assert_eq!(mesh.x[b as usize], 3.0);
        }
    }
}
