//! Where the datapath lives on bpffs, and how one map layout replaces
//! another without a moment of outage.
//!
//! ```text
//! <bpffs>/links/<hook>             one bpf_link per hook; they outlive every generation
//! <bpffs>/v<layout>-<seq>/<MAP>    one generation of maps, created by a build of that layout
//! <bpffs>/SOCKLB_*                 the maps of builds from before generations (layout 1)
//! ```
//!
//! A build adopts the generation its links use when the layout is its own.
//! Otherwise it creates a generation of its own beside the live one, shares
//! the per-socket state maps whose layout did not change (so established
//! sockets keep their reverse translations), fills the rest from the
//! desired state, and only then swaps every link's program for one bound to
//! the new maps (BPF_LINK_UPDATE). The old generation is removed last; the
//! kernel frees its maps once no program uses them.

use std::{
    fs, io,
    os::{fd::AsFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use socklb_common::{LAYOUT_VERSION, map_names, sys};

use super::MapSpec;

/// The layout of the maps pinned at the top of `--bpffs` (no generations).
pub const LEGACY_LAYOUT: u32 = 1;

/// One set of maps of one layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub dir: PathBuf,
    pub layout: u32,
    /// Order of creation (0 for the legacy maps).
    pub seq: u32,
}

impl Generation {
    pub fn is_legacy(&self) -> bool {
        self.seq == 0
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn name(&self) -> String {
        if self.is_legacy() {
            format!("layout {} (unversioned pins)", self.layout)
        } else {
            self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        }
    }
}

/// Parses a generation directory's name, `v<layout>-<seq>`.
pub fn parse_dir_name(name: &str) -> Option<(u32, u32)> {
    let (layout, seq) = name.strip_prefix('v')?.split_once('-')?;
    let (layout, seq) = (layout.parse().ok()?, seq.parse().ok()?);
    (seq > 0).then_some((layout, seq))
}

/// Every generation pinned under `bpffs`, oldest first.
pub fn generations(bpffs: &Path) -> io::Result<Vec<Generation>> {
    let mut out = Vec::new();
    if bpffs.join(map_names::FRONTENDS).exists() {
        out.push(Generation { dir: bpffs.to_owned(), layout: LEGACY_LAYOUT, seq: 0 });
    }
    let entries = match fs::read_dir(bpffs) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((layout, seq)) = name.to_str().and_then(parse_dir_name)
            && entry.file_type()?.is_dir()
        {
            out.push(Generation { dir: entry.path(), layout, seq });
        }
    }
    out.sort_by_key(|g| g.seq);
    Ok(out)
}

/// The ids of the maps program `prog_id` uses.
pub fn program_map_ids(prog_id: u32) -> Option<Vec<u32>> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .and_then(|p| p.map_ids().ok().flatten())
}

/// The id of a pinned map.
pub fn map_id(pin: &Path) -> Option<u32> {
    MapData::from_pin(pin).ok()?.info().ok().map(|i| i.id())
}

/// The generation the attached programs use (by the connect4 link's
/// program's maps), if the links are there.
pub fn live_generation(links: &Path, gens: &[Generation]) -> Option<Generation> {
    let fd = sys::obj_get(&links.join("connect4")).ok()?;
    let prog_id = sys::link_info(fd.as_fd()).ok()?.prog_id;
    let ids = program_map_ids(prog_id)?;
    gens.iter().find(|g| map_id(&g.map(map_names::FRONTENDS)).is_some_and(|id| ids.contains(&id))).cloned()
}

/// The generation tools should read: the live one, else the newest.
pub fn active_generation(bpffs: &Path) -> Option<Generation> {
    let gens = generations(bpffs).ok()?;
    live_generation(&bpffs.join("links"), &gens).or_else(|| gens.last().cloned())
}

/// The directory of the maps tools should read (see [`active_generation`]);
/// `bpffs` itself when nothing is pinned.
pub fn active_dir(bpffs: &Path) -> PathBuf {
    active_generation(bpffs).map_or_else(|| bpffs.to_owned(), |g| g.dir)
}

/// A new, empty generation of this build's layout.
pub fn create_generation(bpffs: &Path, gens: &[Generation]) -> io::Result<Generation> {
    let seq = gens.iter().map(|g| g.seq).max().unwrap_or(0) + 1;
    let dir = bpffs.join(format!("v{LAYOUT_VERSION}-{seq:04}"));
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(Generation { dir, layout: LAYOUT_VERSION, seq })
}

/// Pins `from`'s per-socket state maps into `to` where their layout is the
/// same, so that the new programs read the same socket storage. Returns the
/// names shared.
pub fn share_state_maps(from: &Generation, to: &Generation, specs: &[MapSpec]) -> Vec<&'static str> {
    let mut shared = Vec::new();
    for spec in specs.iter().filter(|s| s.shared_across_layouts) {
        let (src, dst) = (from.map(spec.name), to.map(spec.name));
        if dst.exists() {
            continue;
        }
        let Ok(data) = MapData::from_pin(&src) else { continue };
        let Ok(info) = data.info() else { continue };
        let same = info.map_type().is_ok_and(|t| t == spec.map_type)
            && info.key_size() == spec.key_size
            && info.value_size() == spec.value_size;
        if same && data.pin(&dst).is_ok() {
            shared.push(spec.name);
        }
    }
    shared
}

/// Unpins a generation's maps and removes its directory (the legacy maps
/// live beside the links and the other generations: only they go).
pub fn remove_generation(g: &Generation) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(&g.dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_map = name.starts_with("SOCKLB_") && !entry.file_type()?.is_dir();
        if is_map {
            fs::remove_file(entry.path())?;
            removed.push(name);
        }
    }
    if !g.is_legacy() {
        fs::remove_dir(&g.dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_directories_parse() {
        assert_eq!(parse_dir_name("v2-0001"), Some((2, 1)));
        assert_eq!(parse_dir_name("v1002-0013"), Some((1002, 13)));
        assert_eq!(parse_dir_name("v2-0000"), None, "seq 0 is the legacy pins");
        assert_eq!(parse_dir_name("links"), None);
        assert_eq!(parse_dir_name("v2"), None);
    }
}
