//! A pack's object map (`pack-<name>.map`, beside its `.pack` and `.idx`):
//! where each of the pack's blob entries (a blob, or a delta whose chain of
//! bases ends in a blob) lies, found by a short prefix of its id. A lazy
//! fetch wants blobs only, so it reads the maps instead of the `.idx` files:
//! a prefix of 5 bytes instead of the id, no entry for commits and trees,
//! lengths and gaps as varints (tokio's history, gc'd: a 0.23 MB map for a
//! 1.31 MB `.idx`, 2026-12-04).
//!
//! Written by gc (full and geometric), the views and migrate for every pack,
//! by a push for a pack whose `.idx` is at least [`PUSH_MAP_MIN_IDX_BYTES`].
//! Optional (`PackEntry::map_size`: 0, or absent, means none; older readers
//! ignore the field and never read the file) and advisory: whatever it says
//! is checked as what an `.idx` says is (each entry's CRC-32, `git
//! index-pack` of what is built, the wanted objects present afterwards); a
//! ranged fetch guided by maps that fails in any way is made again with the
//! `.idx` files (`ranged.rs`).
//!
//! The file: `GS3M`, version 1, id length, prefix length, 0; the pack's
//! checksum; the entry count (u32); per entry in pack order: the gap since
//! the previous entry's end (varint), the length (varint), the CRC-32
//! (u32), the prefix; the checksum (the object format's hash) of all before.
//! Integers are big-endian; varints are LEB128.

use std::collections::HashMap;
use std::path::Path;

use crate::local::oid::ObjectFormat;
use crate::storage::packs::pack_index::{checksum, entry_header, resolved_kind, Base, PackIndex, OBJ_BLOB};

const MAGIC: &[u8; 4] = b"GS3M";
/// A push writes a map for its pack when the pack's `.idx` has at least
/// this many bytes (about 550 objects): below, the `.idx` costs a lazy
/// fetch little, and a one-commit push makes no request more. gc, the
/// views and migrate write one for every pack.
pub(crate) const PUSH_MAP_MIN_IDX_BYTES: u64 = 16 << 10;
const VERSION: u8 = 1;
/// The shortest prefix written: a wanted object of another pack matches
/// one of a pack's `n` blob prefixes with a chance of n / 2^40.
const MIN_PREFIX: usize = 5;
/// A pack's header (`PACK`, version, count): no entry starts before.
const PACK_HEADER: u64 = 12;
/// Bytes read at an entry's start for its header (type, size, delta base).
const HEADER_READ: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum MapError {
    #[error("not a version 1 object map for this object format")]
    Header,
    #[error("the object map's checksum does not match its content")]
    Checksum,
    #[error("the object map is of another pack")]
    OtherPack,
    #[error("the object map is truncated or has trailing bytes")]
    Length,
    #[error("the object map's entries are empty, overlap or share a prefix")]
    Entries,
}

/// A parsed object map.
#[derive(Debug)]
pub(crate) struct ObjectMap {
    prefix_len: usize,
    /// Entries in pack order: start, end, CRC-32.
    offsets: Vec<u64>,
    ends: Vec<u64>,
    crcs: Vec<u32>,
    /// `prefix_len` bytes per entry, same order.
    prefixes: Vec<u8>,
    /// Entry positions sorted by prefix.
    by_prefix: Vec<u32>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &[u8], at: &mut usize) -> Result<u64, MapError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at).ok_or(MapError::Length)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(MapError::Entries)
}

/// The object map of a pack: `idx` its parsed index, `pack` the file, of
/// `format`, named `name` (its checksum). Reads each entry's header from
/// the file (a blocking function: call it off the async workers).
pub(crate) fn build(idx: &PackIndex, pack: &Path, name: &[u8], format: ObjectFormat) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(pack)?;
    let pack_len = file.metadata()?.len();
    let hash_len = format.raw_len();
    let entries: Vec<(u64, u64, &[u8], u32)> = idx.entries(pack_len).collect();
    let mut chains: HashMap<u64, (u8, Option<u64>)> = HashMap::with_capacity(entries.len());
    let mut buf = [0u8; HEADER_READ];
    for (offset, end, _, _) in &entries {
        let want = usize::try_from(end.saturating_sub(*offset)).unwrap_or(HEADER_READ).min(HEADER_READ);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..want], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        let h = entry_header(&buf[..got], *offset, hash_len).map_err(std::io::Error::other)?;
        let base = match h.base {
            None => None,
            Some(Base::Offset(o)) => Some(o),
            Some(Base::Oid(oid)) => idx.offset_of(&oid),
        };
        chains.insert(*offset, (h.kind, base));
    }
    let listed: Vec<&(u64, u64, &[u8], u32)> = entries.iter().filter(|e| resolved_kind(&chains, e.0) == Some(OBJ_BLOB)).collect();
    // The shortest prefix (at least MIN_PREFIX) that tells the listed ids apart.
    let mut sorted: Vec<&[u8]> = listed.iter().map(|e| e.2).collect();
    sorted.sort_unstable();
    let common = sorted.windows(2).map(|w| w[0].iter().zip(w[1]).take_while(|(a, b)| a == b).count()).max().unwrap_or(0);
    let prefix_len = (common + 1).max(MIN_PREFIX).min(hash_len);

    let mut out = Vec::with_capacity(16 + hash_len * 2 + listed.len() * (prefix_len + 8));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[VERSION, hash_len as u8, prefix_len as u8, 0]);
    out.extend_from_slice(name);
    out.extend_from_slice(&(listed.len() as u32).to_be_bytes());
    let mut previous_end = PACK_HEADER;
    for (offset, end, oid, crc) in listed {
        put_varint(&mut out, offset - previous_end);
        put_varint(&mut out, end - offset);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&oid[..prefix_len]);
        previous_end = *end;
    }
    let sum = checksum(format, &out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Writes the object map of `<stem>.pack` (indexed by `<stem>.idx`, named
/// `name`) to `<stem>.map`, off the async workers. Its size, or 0 (and
/// no file) when it cannot be made: the map is optional.
pub(crate) async fn write_beside(stem: &Path, name: &str) -> u64 {
    let (pack, idx, map) = (stem.with_extension("pack"), stem.with_extension("idx"), stem.with_extension("map"));
    let name = name.to_string();
    let made = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let format = ObjectFormat::from_hex_len(name.len()).ok_or_else(|| std::io::Error::other("not a pack name"))?;
        let checksum = hex::decode(&name).map_err(std::io::Error::other)?;
        let idx = PackIndex::parse(&std::fs::read(idx)?, Some(&checksum), format).map_err(std::io::Error::other)?;
        let bytes = build(&idx, &pack, &checksum, format)?;
        std::fs::write(&map, &bytes)?;
        Ok(bytes.len() as u64)
    })
    .await;
    match made {
        Ok(Ok(size)) => size,
        Ok(Err(e)) => {
            tracing::warn!(stem = %stem.display(), error = %e, "no object map for a pack (lazy fetches read its .idx)");
            0
        }
        Err(e) => {
            tracing::warn!(error = %e, "no object map for a pack (lazy fetches read its .idx)");
            0
        }
    }
}

impl ObjectMap {
    /// Parses and checks a map: its checksum, that it is the map of the
    /// pack whose checksum is `pack`, entries in order and apart, prefixes
    /// distinct.
    pub(crate) fn parse(data: &[u8], pack: &[u8], format: ObjectFormat) -> Result<ObjectMap, MapError> {
        let hash_len = format.raw_len();
        let head = 8 + hash_len + 4;
        if data.len() < head + hash_len || &data[..4] != MAGIC || data[4] != VERSION || usize::from(data[5]) != hash_len {
            return Err(MapError::Header);
        }
        let prefix_len = usize::from(data[6]);
        if prefix_len == 0 || prefix_len > hash_len {
            return Err(MapError::Header);
        }
        let (body, sum) = data.split_at(data.len() - hash_len);
        if checksum(format, body) != sum {
            return Err(MapError::Checksum);
        }
        if &body[8..8 + hash_len] != pack {
            return Err(MapError::OtherPack);
        }
        let count = u32::from_be_bytes([body[head - 4], body[head - 3], body[head - 2], body[head - 1]]) as usize;
        // Each entry takes at least 6 bytes plus its prefix.
        if count > body.len() / (prefix_len + 6) {
            return Err(MapError::Length);
        }
        let mut map = ObjectMap {
            prefix_len,
            offsets: Vec::with_capacity(count),
            ends: Vec::with_capacity(count),
            crcs: Vec::with_capacity(count),
            prefixes: Vec::with_capacity(count * prefix_len),
            by_prefix: (0..count as u32).collect(),
        };
        let (mut at, mut previous_end) = (head, PACK_HEADER);
        for _ in 0..count {
            let offset = previous_end.checked_add(get_varint(body, &mut at)?).ok_or(MapError::Entries)?;
            let len = get_varint(body, &mut at)?;
            let end = offset.checked_add(len).filter(|_| len > 0).ok_or(MapError::Entries)?;
            let rest = body.get(at..at + 4 + prefix_len).ok_or(MapError::Length)?;
            map.crcs.push(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
            map.prefixes.extend_from_slice(&rest[4..]);
            map.offsets.push(offset);
            map.ends.push(end);
            previous_end = end;
            at += 4 + prefix_len;
        }
        if at != body.len() {
            return Err(MapError::Length);
        }
        let mut by_prefix = std::mem::take(&mut map.by_prefix);
        by_prefix.sort_unstable_by(|a, b| map.prefix(*a as usize).cmp(map.prefix(*b as usize)));
        if by_prefix.windows(2).any(|w| map.prefix(w[0] as usize) == map.prefix(w[1] as usize)) {
            return Err(MapError::Entries);
        }
        map.by_prefix = by_prefix;
        Ok(map)
    }

    fn prefix(&self, i: usize) -> &[u8] {
        &self.prefixes[i * self.prefix_len..(i + 1) * self.prefix_len]
    }

    /// Blob entries listed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Where the entry of the blob whose id starts like `oid` starts.
    pub(crate) fn offset_of(&self, oid: &[u8]) -> Option<u64> {
        let key = oid.get(..self.prefix_len)?;
        let i = self.by_prefix.binary_search_by(|p| self.prefix(*p as usize).cmp(key)).ok()?;
        Some(self.offsets[self.by_prefix[i] as usize])
    }

    fn position(&self, offset: u64) -> Option<usize> {
        self.offsets.binary_search(&offset).ok()
    }

    /// Where the entry at `offset` ends.
    pub(crate) fn end_of(&self, offset: u64) -> Option<u64> {
        self.position(offset).map(|i| self.ends[i])
    }

    /// Whether `raw`, read as the entry at `offset`, has the recorded CRC-32.
    pub(crate) fn crc_matches(&self, offset: u64, raw: &[u8]) -> bool {
        self.position(offset).is_some_and(|i| self.crcs[i] == crc32fast::hash(raw))
    }

    /// The prefix of the id of the object at `offset`.
    pub(crate) fn prefix_at(&self, offset: u64) -> Option<&[u8]> {
        self.position(offset).map(|i| self.prefix(i))
    }
}

/// How a ranged fetch finds entries in one pack: its `.idx`, or its map.
#[derive(Debug)]
pub(crate) enum Locator {
    Index(Box<PackIndex>),
    Map(ObjectMap),
}

impl Locator {
    pub(crate) fn is_map(&self) -> bool {
        matches!(self, Locator::Map(_))
    }

    /// Where the entry of object `oid` starts, if the pack holds it (a
    /// map: if it holds a blob whose id starts so).
    pub(crate) fn offset_of(&self, oid: &[u8]) -> Option<u64> {
        match self {
            Locator::Index(i) => i.offset_of(oid),
            Locator::Map(m) => m.offset_of(oid),
        }
    }

    /// Where the entry at `offset` of a pack of `pack_len` bytes ends.
    pub(crate) fn end_of(&self, offset: u64, pack_len: u64) -> Option<u64> {
        match self {
            Locator::Index(i) => i.end_of(offset, pack_len),
            Locator::Map(m) => m.end_of(offset).filter(|e| *e <= pack_len),
        }
    }

    pub(crate) fn crc_matches(&self, offset: u64, raw: &[u8]) -> bool {
        match self {
            Locator::Index(i) => i.crc_matches(offset, raw),
            Locator::Map(m) => m.crc_matches(offset, raw),
        }
    }

    /// The id (an `.idx`) or a prefix of it (a map) of the object at
    /// `offset`: what `git cat-file` is asked about.
    pub(crate) fn name_at(&self, offset: u64) -> Option<&[u8]> {
        match self {
            Locator::Index(i) => i.oid_at(offset),
            Locator::Map(m) => m.prefix_at(offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::packs::pack_index::tests::git_made_pack;

    /// A map of a git-made pack (both formats) lists every blob entry where
    /// the `.idx` puts it, smaller; an altered or foreign map is refused.
    #[tokio::test]
    async fn maps_of_git_made_packs_agree_with_their_index() {
        for format in [ObjectFormat::Sha1, ObjectFormat::Sha256] {
            let (dir, blobs, name, pack, idx_bytes) = git_made_pack(format);
            let checksum = hex::decode(&name).unwrap();
            let idx = PackIndex::parse(&idx_bytes, Some(&checksum), format).unwrap();
            let stem = dir.path().join(format!("out-{name}"));
            let size = write_beside(&stem, &name).await;
            let data = std::fs::read(stem.with_extension("map")).unwrap();
            assert_eq!(size, data.len() as u64);
            assert!(data.len() < idx_bytes.len() / 2, "{} bytes of map, {} of .idx", data.len(), idx_bytes.len());
            let map = ObjectMap::parse(&data, &checksum, format).unwrap();
            assert_eq!(map.len(), blobs.len());
            for b in &blobs {
                let oid = hex::decode(b).unwrap();
                let at = idx.offset_of(&oid).unwrap();
                assert_eq!(map.offset_of(&oid), Some(at));
                assert_eq!(map.end_of(at), idx.end_of(at, pack.len() as u64));
                let raw = &pack[at as usize..map.end_of(at).unwrap() as usize];
                assert!(map.crc_matches(at, raw));
                assert_eq!(map.prefix_at(at), Some(&oid[..map.prefix_len]));
            }
            let mut other = hex::decode(&blobs[0]).unwrap();
            other[MIN_PREFIX + 1] ^= 1;
            assert_eq!(map.offset_of(&other).is_some(), map.prefix_len <= MIN_PREFIX + 1, "a prefix finds it, no more");
            *other.first_mut().unwrap() ^= 0x80;
            assert_eq!(map.offset_of(&other), None);

            assert_eq!(ObjectMap::parse(&data, &vec![0; format.raw_len()], format).unwrap_err(), MapError::OtherPack);
            let mut broken = data.clone();
            broken[data.len() / 2] ^= 1;
            assert_eq!(ObjectMap::parse(&broken, &checksum, format).unwrap_err(), MapError::Checksum);
            let foreign = if format == ObjectFormat::Sha1 { ObjectFormat::Sha256 } else { ObjectFormat::Sha1 };
            assert_eq!(ObjectMap::parse(&data, &checksum, foreign).unwrap_err(), MapError::Header);
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut at = 0;
            assert_eq!(get_varint(&out, &mut at), Ok(v));
            assert_eq!(at, out.len());
        }
        assert_eq!(get_varint(&[0x80], &mut 0), Err(MapError::Length));
    }
}
