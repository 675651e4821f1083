//! The bytes of git's pack files, for ranged reads (`ranged.rs`): a pack
//! index (`.idx` version 2, SHA-1 or SHA-256 names) parsed to find where each object's entry
//! starts and ends in its pack, the header of an entry (type, delta base),
//! and a new pack built from entries copied raw (an OFS_DELTA's distance
//! computed again for the new pack, or the entry rewritten as a REF_DELTA
//! when its base is not in it).
//!
//! Written here rather than with gitoxide's `gix-pack`: the format is a few
//! dozen lines, and `git index-pack` verifies every object of what is built.

use std::collections::HashMap;

use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::local::oid::ObjectFormat;

/// The checksum `format` uses for packs and indexes (its hash of `data`).
pub(crate) fn checksum(format: ObjectFormat, data: &[u8]) -> Vec<u8> {
    match format {
        ObjectFormat::Sha1 => Sha1::digest(data).to_vec(),
        ObjectFormat::Sha256 => Sha256::digest(data).to_vec(),
    }
}

/// Object types in a pack entry's header.
pub(crate) const OBJ_COMMIT: u8 = 1;
pub(crate) const OBJ_TREE: u8 = 2;
pub(crate) const OBJ_BLOB: u8 = 3;
pub(crate) const OBJ_TAG: u8 = 4;
pub(crate) const OBJ_OFS_DELTA: u8 = 6;
pub(crate) const OBJ_REF_DELTA: u8 = 7;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PackFormatError {
    #[error("not a version 2 pack index")]
    NotIdxV2,
    #[error("the pack index is truncated or has trailing bytes")]
    IdxLength,
    #[error("the pack index's checksum does not match its content")]
    IdxChecksum,
    #[error("the pack index is of another pack")]
    OtherPack,
    #[error("the pack index's object names are not sorted")]
    Unsorted,
    #[error("an entry header at offset {0} is invalid")]
    Header(u64),
}

/// A parsed `.idx` (version 2).
#[derive(Debug)]
pub(crate) struct PackIndex {
    /// Bytes of an object name (20 for SHA-1, 32 for SHA-256).
    hash_len: usize,
    fanout: [u32; 256],
    /// The object names, sorted, `hash_len` bytes each.
    names: Vec<u8>,
    /// The entry offset of each name (same order).
    offsets: Vec<u64>,
    /// The CRC-32 of each entry's bytes in the pack (same order).
    crcs: Vec<u32>,
    /// (offset, position in `names`), sorted by offset.
    by_offset: Vec<(u64, u32)>,
}

impl PackIndex {
    /// Parses and checks an index: its own checksum, sorted names, and
    /// (when given) that it is the index of the pack whose checksum is
    /// `pack` (a pack's name is its checksum), names of `format`.
    pub(crate) fn parse(data: &[u8], pack: Option<&[u8]>, format: ObjectFormat) -> Result<PackIndex, PackFormatError> {
        const HEADER: usize = 8 + 256 * 4;
        let hash_len = format.raw_len();
        if data.len() < HEADER + 2 * hash_len || data[..8] != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
            return Err(PackFormatError::NotIdxV2);
        }
        let (body, sum) = data.split_at(data.len() - hash_len);
        if checksum(format, body) != sum {
            return Err(PackFormatError::IdxChecksum);
        }
        let be32 = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let mut fanout = [0u32; 256];
        for i in 0..256 {
            fanout[i] = be32(8 + i * 4);
            if i > 0 && fanout[i] < fanout[i - 1] {
                return Err(PackFormatError::Unsorted);
            }
        }
        let n = fanout[255] as usize;
        let names_at = HEADER;
        let offsets_at = names_at.checked_add(n.checked_mul(hash_len + 4).ok_or(PackFormatError::IdxLength)?).ok_or(PackFormatError::IdxLength)?;
        let large_at = offsets_at.checked_add(n * 4).ok_or(PackFormatError::IdxLength)?;
        if large_at > data.len() {
            return Err(PackFormatError::IdxLength);
        }
        let large_count = (0..n).filter(|i| be32(offsets_at + i * 4) & 0x8000_0000 != 0).count();
        if large_at + large_count * 8 + 2 * hash_len != data.len() {
            return Err(PackFormatError::IdxLength);
        }
        let names = data[names_at..names_at + n * hash_len].to_vec();
        if names.chunks(hash_len).zip(names.chunks(hash_len).skip(1)).any(|(a, b)| a >= b) {
            return Err(PackFormatError::Unsorted);
        }
        let crcs_at = names_at + n * hash_len;
        let crcs: Vec<u32> = (0..n).map(|i| be32(crcs_at + i * 4)).collect();
        let mut offsets = Vec::with_capacity(n);
        for i in 0..n {
            let o = be32(offsets_at + i * 4);
            offsets.push(if o & 0x8000_0000 == 0 {
                u64::from(o)
            } else {
                let at = large_at + (o & 0x7fff_ffff) as usize * 8;
                if at + 8 > large_at + large_count * 8 {
                    return Err(PackFormatError::IdxLength);
                }
                u64::from_be_bytes(data[at..at + 8].try_into().map_err(|_| PackFormatError::IdxLength)?)
            });
        }
        let mut by_offset: Vec<(u64, u32)> = offsets.iter().enumerate().map(|(i, o)| (*o, i as u32)).collect();
        by_offset.sort_unstable();
        let pack_checksum = &data[data.len() - 2 * hash_len..data.len() - hash_len];
        if pack.is_some_and(|p| p != pack_checksum) {
            return Err(PackFormatError::OtherPack);
        }
        Ok(PackIndex { hash_len, fanout, names, offsets, crcs, by_offset })
    }

    /// Objects in the pack.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Where the entry of object `oid` starts, if the pack holds it.
    pub(crate) fn offset_of(&self, oid: &[u8]) -> Option<u64> {
        let first = *oid.first()? as usize;
        let lo = if first == 0 { 0 } else { self.fanout[first - 1] as usize };
        let hi = self.fanout[first] as usize;
        let (mut lo, mut hi) = (lo, hi.min(self.offsets.len()));
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.name(mid).cmp(oid) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.offsets[mid]),
            }
        }
        None
    }

    /// The object whose entry starts at `offset`.
    pub(crate) fn oid_at(&self, offset: u64) -> Option<&[u8]> {
        let i = self.by_offset.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        Some(self.name(self.by_offset[i].1 as usize))
    }

    /// Every entry in pack order: (offset, end, object name, CRC-32), the
    /// last one ending at the pack's trailing checksum (`pack_len` − the
    /// checksum's length).
    pub(crate) fn entries(&self, pack_len: u64) -> impl Iterator<Item = (u64, u64, &[u8], u32)> + '_ {
        self.by_offset.iter().enumerate().map(move |(k, (offset, i))| {
            let end = self.by_offset.get(k + 1).map_or(pack_len.saturating_sub(self.hash_len as u64), |(next, _)| *next);
            (*offset, end, self.name(*i as usize), self.crcs[*i as usize])
        })
    }

    /// Where the entry at `offset` ends: the next entry's start, or the
    /// pack's trailing checksum (`pack_len` − its length) for the last one.
    pub(crate) fn end_of(&self, offset: u64, pack_len: u64) -> Option<u64> {
        let i = self.by_offset.binary_search_by_key(&offset, |(o, _)| *o).ok()?;
        let end = match self.by_offset.get(i + 1) {
            Some((next, _)) => *next,
            None => pack_len.checked_sub(self.hash_len as u64)?,
        };
        (end > offset).then_some(end)
    }

    /// Whether `raw`, read as the entry at `offset`, has the CRC-32 the
    /// index records for that entry (git computed it from the pack).
    pub(crate) fn crc_matches(&self, offset: u64, raw: &[u8]) -> bool {
        let Ok(i) = self.by_offset.binary_search_by_key(&offset, |(o, _)| *o) else { return false };
        self.crcs[self.by_offset[i].1 as usize] == crc32fast::hash(raw)
    }

    fn name(&self, i: usize) -> &[u8] {
        &self.names[i * self.hash_len..(i + 1) * self.hash_len]
    }
}

/// What an entry's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    /// `OBJ_COMMIT` … `OBJ_REF_DELTA`.
    pub(crate) kind: u8,
    /// Bytes of the type-and-size header (what is copied as is).
    pub(crate) size_len: usize,
    /// Bytes of the whole header (with the delta base).
    pub(crate) len: usize,
    pub(crate) base: Option<Base>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base {
    /// OFS_DELTA: the base entry's offset in the same pack.
    Offset(u64),
    /// REF_DELTA: the base object's id.
    Oid(Vec<u8>),
}

/// Parses the header of the entry at `offset` whose first bytes are `entry`
/// (a REF_DELTA's base id has `hash_len` bytes).
pub(crate) fn entry_header(entry: &[u8], offset: u64, hash_len: usize) -> Result<EntryHeader, PackFormatError> {
    let bad = || PackFormatError::Header(offset);
    let mut i = 0;
    let mut c = *entry.first().ok_or_else(bad)?;
    let kind = (c >> 4) & 7;
    while c & 0x80 != 0 {
        i += 1;
        if i > 10 {
            return Err(bad());
        }
        c = *entry.get(i).ok_or_else(bad)?;
    }
    let size_len = i + 1;
    match kind {
        OBJ_COMMIT | OBJ_TREE | OBJ_BLOB | OBJ_TAG => Ok(EntryHeader { kind, size_len, len: size_len, base: None }),
        OBJ_OFS_DELTA => {
            let mut j = size_len;
            let mut c = *entry.get(j).ok_or_else(bad)?;
            let mut distance = u64::from(c & 0x7f);
            while c & 0x80 != 0 {
                j += 1;
                if j - size_len > 9 {
                    return Err(bad());
                }
                c = *entry.get(j).ok_or_else(bad)?;
                distance = distance.checked_add(1).and_then(|d| d.checked_mul(128)).ok_or_else(bad)? | u64::from(c & 0x7f);
            }
            let base = offset.checked_sub(distance).filter(|_| distance > 0).ok_or_else(bad)?;
            Ok(EntryHeader { kind, size_len, len: j + 1, base: Some(Base::Offset(base)) })
        }
        OBJ_REF_DELTA => {
            let oid = entry.get(size_len..size_len + hash_len).ok_or_else(bad)?;
            Ok(EntryHeader { kind, size_len, len: size_len + hash_len, base: Some(Base::Oid(oid.to_vec())) })
        }
        _ => Err(bad()),
    }
}

/// What an OFS_DELTA's base becomes in a new pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewBase<'a> {
    /// The base is in the new pack this many bytes before the entry.
    Distance(u64),
    /// The base is not in the new pack: a REF_DELTA on this id.
    Oid(&'a [u8]),
}

/// An OFS_DELTA's distance in git's encoding (big-endian groups of 7 bits,
/// each but the last one less one).
fn encode_distance(mut d: u64) -> Vec<u8> {
    let mut out = vec![(d & 0x7f) as u8];
    d >>= 7;
    while d > 0 {
        d -= 1;
        out.push(0x80 | (d & 0x7f) as u8);
        d >>= 7;
    }
    out.reverse();
    out
}

/// The entry `raw` (its header `h`) as it goes into a new pack: an OFS_DELTA
/// gets its base's distance in the new pack, or becomes a REF_DELTA on the
/// base's id (same size header with type 7, the id, the same compressed
/// data); other entries are copied as they are. None for an OFS_DELTA
/// without `base`.
pub(crate) fn rewrite_entry(raw: &[u8], h: &EntryHeader, base: Option<NewBase<'_>>) -> Option<Vec<u8>> {
    if h.kind != OBJ_OFS_DELTA {
        return Some(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len() + 32);
    match base? {
        NewBase::Distance(d) if d > 0 => {
            out.extend_from_slice(raw.get(..h.size_len)?);
            out.extend_from_slice(&encode_distance(d));
        }
        NewBase::Distance(_) => return None,
        NewBase::Oid(oid) => {
            out.push((raw[0] & 0x8f) | (OBJ_REF_DELTA << 4));
            out.extend_from_slice(raw.get(1..h.size_len)?);
            out.extend_from_slice(oid);
        }
    }
    out.extend_from_slice(raw.get(h.len..)?);
    Some(out)
}

/// A pack of `entries` (each already as `rewrite_entry` made it): header,
/// the entries, the checksum of it all in `format`.
pub(crate) fn build_pack(entries: &[Vec<u8>], format: ObjectFormat) -> Vec<u8> {
    let body: usize = entries.iter().map(Vec::len).sum();
    let mut pack = Vec::with_capacity(12 + body + format.raw_len());
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        pack.extend_from_slice(e);
    }
    let sum = checksum(format, &pack);
    pack.extend_from_slice(&sum);
    pack
}

/// The type of each object of `chains` once its deltas are resolved:
/// `chains` maps an entry's offset to its header's type and base offset;
/// None when a chain leaves the map or loops.
pub(crate) fn resolved_kind(chains: &HashMap<u64, (u8, Option<u64>)>, mut offset: u64) -> Option<u8> {
    for _ in 0..=chains.len() {
        match chains.get(&offset)? {
            (k, None) => return Some(*k),
            (_, Some(base)) => offset = *base,
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn headers_of_base_and_delta_entries() {
        // a blob of 5 bytes: type 3, size in one byte
        let h = entry_header(&[0x35, 0x78, 0x9c], 12, 20).unwrap();
        assert_eq!(h, EntryHeader { kind: OBJ_BLOB, size_len: 1, len: 1, base: None });
        // size over two bytes (0x95: type 1, continue; 0x02) = 5 + (2 << 4)
        let h = entry_header(&[0x95, 0x02, 0x78], 12, 20).unwrap();
        assert_eq!((h.kind, h.size_len, h.len), (OBJ_COMMIT, 2, 2));
        // OFS_DELTA, distance 10 in one byte
        let h = entry_header(&[0x65, 0x0a, 0x78], 100, 20).unwrap();
        assert_eq!(h, EntryHeader { kind: OBJ_OFS_DELTA, size_len: 1, len: 2, base: Some(Base::Offset(90)) });
        // OFS_DELTA, two-byte distance: ((0x01 + 1) << 7) | 0x05 = 261
        let h = entry_header(&[0x65, 0x81, 0x05, 0x78], 1000, 20).unwrap();
        assert_eq!(h.base, Some(Base::Offset(1000 - 261)));
        assert_eq!(h.len, 3);
        // REF_DELTA
        let mut e = vec![0x75];
        e.extend_from_slice(&[0xab; 20]);
        let h = entry_header(&e, 7, 20).unwrap();
        assert_eq!(h.base, Some(Base::Oid(vec![0xab; 20])));
        // a base before the pack's start, type 0 or 5, a cut header
        assert!(entry_header(&[0x65, 0x7f], 50, 20).is_err());
        assert!(entry_header(&[0x05], 50, 20).is_err());
        assert!(entry_header(&[0x55], 50, 20).is_err());
        assert!(entry_header(&[0x95], 50, 20).is_err());
        assert!(entry_header(&[0x75, 1, 2], 50, 20).is_err());
    }

    #[test]
    fn an_ofs_delta_becomes_a_ref_delta_with_the_same_size_and_data() {
        // type 6, size over two bytes, distance over two bytes, then data
        let raw = [0xe5, 0x03, 0x81, 0x05, 0xde, 0xad];
        let h = entry_header(&raw, 5000, 20).unwrap();
        let base = [0x11u8; 20];
        let out = rewrite_entry(&raw, &h, Some(NewBase::Oid(&base))).unwrap();
        assert_eq!(out[0], 0xf5, "type 7, the same size bits and continuation");
        assert_eq!(out[1], 0x03);
        assert_eq!(&out[2..22], &base);
        assert_eq!(&out[22..], &[0xde, 0xad]);
        let again = entry_header(&out, 0, 20).unwrap();
        assert_eq!(again.base, Some(Base::Oid(base.to_vec())));
        assert_eq!(again.size_len, h.size_len);
        // without a base id it cannot be rewritten; other entries are copied
        assert_eq!(rewrite_entry(&raw, &h, None), None);
        let blob = [0x35, 0x78, 0x9c];
        assert_eq!(rewrite_entry(&blob, &entry_header(&blob, 12, 20).unwrap(), None).unwrap(), blob);
        // on a new distance: the same size bytes, the distance, the data
        let out = rewrite_entry(&raw, &h, Some(NewBase::Distance(10))).unwrap();
        assert_eq!(out, [0xe5, 0x03, 0x0a, 0xde, 0xad]);
        assert_eq!(rewrite_entry(&raw, &h, Some(NewBase::Distance(0))), None);
    }

    #[test]
    fn chains_resolve_to_their_base_type() {
        let chains: HashMap<u64, (u8, Option<u64>)> =
            [(12, (OBJ_BLOB, None)), (40, (OBJ_OFS_DELTA, Some(12))), (90, (OBJ_REF_DELTA, Some(40))), (200, (OBJ_OFS_DELTA, Some(150)))].into();
        assert_eq!(resolved_kind(&chains, 90), Some(OBJ_BLOB));
        assert_eq!(resolved_kind(&chains, 200), None, "its base was not read");
        let looped: HashMap<u64, (u8, Option<u64>)> = [(1, (OBJ_OFS_DELTA, Some(2))), (2, (OBJ_OFS_DELTA, Some(1)))].into();
        assert_eq!(resolved_kind(&looped, 1), None);
    }

    /// A pack of 30 versions of one file (mostly deltas) made by git in a
    /// new bare repository of `format`: (the directory, the blobs oldest
    /// first, the pack's name, the pack, its `.idx`).
    pub(crate) fn git_made_pack(format: ObjectFormat) -> (tempfile::TempDir, Vec<String>, String, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| git_in(dir.path(), args);
        git(&["init", "-q", "--bare", &format.arg(), "."]);
        // versions of one file, each a little longer: git stores them as deltas
        let mut text = String::new();
        let mut blobs = Vec::new();
        for i in 0..30 {
            for k in 0..40 {
                text.push_str(&format!("line {k} of version {i}: the quick brown fox\n"));
            }
            std::fs::write(dir.path().join("f"), &text).unwrap();
            blobs.push(git(&["hash-object", "-w", "f"]).trim().to_string());
        }
        let list: String = blobs.iter().map(|b| format!("{b}\n")).collect();
        let mut child = std::process::Command::new("git")
            .args(["pack-objects", "--delta-base-offset", "-q", "out"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), list.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let pack = std::fs::read(dir.path().join(format!("out-{name}.pack"))).unwrap();
        let idx = std::fs::read(dir.path().join(format!("out-{name}.idx"))).unwrap();
        (dir, blobs, name, pack, idx)
    }

    pub(crate) fn git_in(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git").args(args).current_dir(dir).env("GIT_CONFIG_NOSYSTEM", "1").env("HOME", dir).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn distances_are_encoded_as_git_decodes_them() {
        for d in [1u64, 127, 128, 129, 16_511, 16_512, 1 << 30, (1 << 40) + 12_345] {
            let mut raw = vec![0x65];
            raw.extend_from_slice(&encode_distance(d));
            raw.push(0x78);
            let h = entry_header(&raw, d + 7, 20).unwrap();
            assert_eq!(h.base, Some(Base::Offset(7)), "distance {d}");
            assert_eq!(h.len, raw.len() - 1);
        }
    }

    /// A pack and its index made by git itself (SHA-1 and SHA-256): every
    /// object found, its entry's bounds right, and packs rebuilt from some
    /// entries (deltas on ids, deltas on new distances) accepted by `git
    /// index-pack`.
    #[test]
    fn git_made_packs_are_read_and_rebuilt_packs_verify() {
        for format in [ObjectFormat::Sha1, ObjectFormat::Sha256] {
            read_and_rebuild(format);
        }
    }

    fn read_and_rebuild(format: ObjectFormat) {
        let (dir, blobs, name, pack, idx_bytes) = git_made_pack(format);
        let git = |args: &[&str]| git_in(dir.path(), args);
        let hash_len = format.raw_len();
        let idx = PackIndex::parse(&idx_bytes, Some(&hex::decode(&name).unwrap()), format).unwrap();
        assert_eq!(idx.len(), blobs.len());
        assert_eq!(idx.entries(pack.len() as u64).count(), blobs.len());
        assert!(PackIndex::parse(&idx_bytes, Some(&vec![0u8; hash_len]), format).is_err(), "the index of another pack");
        let other = if format == ObjectFormat::Sha1 { ObjectFormat::Sha256 } else { ObjectFormat::Sha1 };
        assert!(PackIndex::parse(&idx_bytes, None, other).is_err(), "the index of another format");
        let mut broken = idx_bytes.clone();
        broken[1100] ^= 1;
        assert_eq!(PackIndex::parse(&broken, None, format).unwrap_err(), PackFormatError::IdxChecksum);

        // The oldest version and every base it needs, as ranges would read them.
        let mut chains: HashMap<u64, (u8, Option<u64>)> = HashMap::new();
        let mut read: Vec<(u64, &[u8], EntryHeader, Option<u64>)> = Vec::new();
        let mut next = Some(idx.offset_of(&hex::decode(&blobs[0]).unwrap()).unwrap());
        while let Some(at) = next {
            let end = idx.end_of(at, pack.len() as u64).unwrap();
            let raw = &pack[at as usize..end as usize];
            assert!(idx.crc_matches(at, raw));
            let mut altered = raw.to_vec();
            altered[raw.len() / 2] ^= 0x10;
            assert!(!idx.crc_matches(at, &altered), "an altered entry does not match its CRC");
            let h = entry_header(raw, at, hash_len).unwrap();
            let base = match &h.base {
                Some(Base::Offset(b)) => Some(*b),
                Some(Base::Oid(o)) => idx.offset_of(o),
                None => None,
            };
            chains.insert(at, (h.kind, base));
            read.push((at, raw, h, base));
            next = base;
        }
        assert!(read.iter().filter(|r| r.3.is_some()).count() > 0, "the oldest version is a delta");
        let first = idx.offset_of(&hex::decode(&blobs[0]).unwrap()).unwrap();
        assert_eq!(resolved_kind(&chains, first), Some(OBJ_BLOB));

        // Deltas on ids, in any order.
        let on_ids: Vec<Vec<u8>> =
            read.iter().map(|(_, raw, h, base)| rewrite_entry(raw, h, base.and_then(|b| idx.oid_at(b)).map(NewBase::Oid)).unwrap()).collect();
        // Deltas on new distances: in pack order, each base before its delta.
        read.sort_by_key(|r| r.0);
        let mut at_new: HashMap<u64, u64> = HashMap::new();
        let mut on_distances = Vec::new();
        let mut offset = 12;
        for (at, raw, h, base) in &read {
            at_new.insert(*at, offset);
            let e = rewrite_entry(raw, h, base.map(|b| NewBase::Distance(offset - at_new[&b]))).unwrap();
            offset += e.len() as u64;
            on_distances.push(e);
        }
        for (file, entries) in [("ids", on_ids), ("distances", on_distances)] {
            let built = build_pack(&entries, format);
            std::fs::write(dir.path().join(format!("{file}.pack")), &built).unwrap();
            git(&["index-pack", "-o", &format!("{file}.idx"), &format!("{file}.pack")]);
            let verified = git(&["verify-pack", "-v", &format!("{file}.idx")]);
            assert!(verified.contains(&blobs[0]), "{verified}");
            // A flipped byte in an entry's data does not verify.
            let mut bad = built.clone();
            let at = bad.len() - 30 - hash_len;
            bad[at] ^= 0x40;
            let len = bad.len();
            let sum = checksum(format, &bad[..len - hash_len]);
            bad[len - hash_len..].copy_from_slice(&sum);
            std::fs::write(dir.path().join("bad.pack"), &bad).unwrap();
            let out = std::process::Command::new("git").args(["index-pack", "-o", "bad.idx", "bad.pack"]).current_dir(dir.path()).output().unwrap();
            assert!(!out.status.success(), "a corrupted entry is refused ({file}, {format:?})");
        }
    }
}
