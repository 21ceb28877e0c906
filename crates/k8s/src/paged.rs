//! A vector in fixed pages: it grows a page at a time, so a big table never
//! holds a doubled copy of itself while it grows (a `Vec` of 100k entries
//! briefly needs room for 300k), and its slack is at most one page.

const PAGE: usize = 1024;

#[derive(Debug)]
pub struct Paged<T> {
    pages: Vec<Box<[Option<T>]>>,
}

impl<T> Default for Paged<T> {
    fn default() -> Self {
        Self { pages: Vec::new() }
    }
}

impl<T> Paged<T> {
    /// Room for indices below this.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.pages.get(i / PAGE)?[i % PAGE].as_ref()
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.pages.get_mut(i / PAGE)?[i % PAGE].as_mut()
    }

    /// Puts `value` at `i`; returns what was there.
    pub fn set(&mut self, i: usize, value: T) -> Option<T> {
        while self.pages.len() <= i / PAGE {
            self.pages.push((0..PAGE).map(|_| None).collect());
        }
        self.pages[i / PAGE][i % PAGE].replace(value)
    }

    pub fn take(&mut self, i: usize) -> Option<T> {
        self.pages.get_mut(i / PAGE)?[i % PAGE].take()
    }

    /// Every value with its index.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.pages.iter().enumerate().flat_map(|(p, page)| {
            page.iter().enumerate().filter_map(move |(i, v)| Some((p * PAGE + i, v.as_ref()?)))
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flat_map(|page| page.iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_where_they_are_put() {
        let mut p: Paged<u32> = Paged::default();
        assert_eq!(p.set(3000, 7), None);
        assert_eq!(p.capacity(), 3 * PAGE);
        assert_eq!(p.get(3000), Some(&7));
        assert_eq!(p.get(5), None);
        p.set(5, 1);
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![(5, &1), (3000, &7)]);
        assert_eq!(p.take(3000), Some(7));
        assert_eq!(p.values().count(), 1);
        assert_eq!(p.get(1 << 20), None);
    }
}
