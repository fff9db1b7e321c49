//! Per-element rows held for every element, or for some pages of consecutive elements only.
//!
//! A whole mesh (the manager's, the direct path's, the embedded default's shared one) holds every
//! row. A `shoal-node` process holds the derived geometry of the pages its partitions touch
//! ([`crate::Mesh::keep_only`]); a row it lacks is computed again from the coordinates when asked
//! for, by the same arithmetic, so a lookup never fails and never changes a bit. Elements are
//! stored in Z-order of their centroids and partitions are compact, so a partition and its halo
//! fall into few pages.

/// Elements per page: 64 rows of 64-byte element geometry are 4 KiB.
pub const PAGE_BITS: u32 = 6;
pub const PAGE: usize = 1 << PAGE_BITS;
/// The base of a page not held: far past any table's end, so that one bounds check answers
/// both "held?" and "in range?".
const ABSENT: usize = usize::MAX >> 1;

/// `width` values per element, by pages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Paged<T> {
    width: usize,
    /// Every page held, in order: a row is found without `page_base` (the manager's and the
    /// embedded default's meshes; one dependent load less in the kernels' walks).
    whole: bool,
    /// Where each page's first row starts in `data`, in rows; [`ABSENT`] for a page not held.
    page_base: Vec<usize>,
    data: Vec<T>,
}

impl<T: Copy + Default> Paged<T> {
    /// Every element's row: `data` holds `width` values per element, element-major.
    pub fn whole(data: Vec<T>, width: usize) -> Self {
        let n = data.len().checked_div(width).unwrap_or(0);
        Paged {
            width,
            whole: true,
            page_base: (0..n.div_ceil(PAGE)).map(|p| p << PAGE_BITS).collect(),
            data,
        }
    }

    /// Nothing held (a table the mesh does not need, such as per-element layers of a mesh
    /// whose layers are even).
    pub fn none() -> Self {
        Paged::default()
    }

    /// Element `e`'s row number in `data` (past its end when not held).
    #[inline(always)]
    fn at(&self, e: usize) -> usize {
        if self.whole {
            return e;
        }
        let base = self
            .page_base
            .get(e >> PAGE_BITS)
            .copied()
            .unwrap_or(ABSENT);
        base + (e & (PAGE - 1))
    }

    /// Element `e`'s value (tables of width 1), if its page is held.
    #[inline(always)]
    pub fn get(&self, e: usize) -> Option<&T> {
        self.data.get(self.at(e))
    }

    /// Element `e`'s row, if its page is held.
    #[inline(always)]
    pub fn row(&self, e: usize) -> Option<&[T]> {
        (self.width > 0).then_some(())?;
        let s = self.at(e).checked_mul(self.width)?;
        self.data.get(s..s.checked_add(self.width)?)
    }

    /// Every row, in element order, when all are held.
    pub fn as_whole(&self) -> Option<&[T]> {
        self.is_whole().then_some(&self.data[..])
    }

    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// Pages held, of all pages.
    pub fn pages(&self) -> (usize, usize) {
        let held = self.page_base.iter().filter(|&&b| b != ABSENT).count();
        (held, self.page_base.len())
    }

    /// Keeps only the pages with `keep[page]` set; the rest are released.
    pub fn keep_pages(&mut self, keep: &[bool]) {
        let per_page = PAGE * self.width;
        self.whole = false;
        let mut data = Vec::with_capacity(keep.iter().filter(|&&k| k).count() * per_page);
        for (p, base) in self.page_base.iter_mut().enumerate() {
            if *base == ABSENT || !keep.get(p).copied().unwrap_or(false) {
                *base = ABSENT;
                continue;
            }
            let from = *base * self.width;
            let next = data.len() / self.width.max(1);
            // Only the mesh's last page is short, and it is packed last.
            data.extend_from_slice(&self.data[from..(from + per_page).min(self.data.len())]);
            *base = next;
        }
        self.data = data;
    }

    pub fn heap_bytes(&self) -> usize {
        self.data.capacity() * std::mem::size_of::<T>()
            + self.page_base.capacity() * std::mem::size_of::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_pages_read_back_and_the_rest_are_absent() {
        let n = 3 * PAGE + 5;
        let mut t = Paged::whole((0..2 * n as u32).collect::<Vec<u32>>(), 2);
        assert!(t.is_whole());
        assert_eq!(
            t.row(n - 1),
            Some(&[2 * n as u32 - 2, 2 * n as u32 - 1][..])
        );
        assert_eq!(t.row(n), None);
        t.keep_pages(&[false, true, false, true]);
        assert_eq!(t.pages(), (2, 4));
        assert!(!t.is_whole() && t.as_whole().is_none());
        for e in 0..n {
            let held = matches!(e / PAGE, 1 | 3);
            let want = [2 * e as u32, 2 * e as u32 + 1];
            assert_eq!(t.row(e), held.then_some(&want[..]), "element {e}");
        }
        assert_eq!(t.row(n + 1), None, "past the last element, in a held page");
        let word = std::mem::size_of::<usize>();
        assert_eq!(t.heap_bytes(), 2 * PAGE * 2 * 4 + 4 * word);
    }
}
