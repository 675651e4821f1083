//! Ranged reads: parts of one object (the entries of a pack) read with HTTP
//! range requests. Nearby ranges are merged into one request (a gap of up to
//! [`MERGE_GAP`] bytes is read rather than paid for with another round
//! trip), the requests run in parallel ([`RANGE_CONCURRENCY`] at once), a
//! request that breaks off is made again, and what is held in memory is
//! bounded ([`MAX_RANGED_BYTES`] per call).

use std::ops::Range;

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use tracing::Instrument;

use super::{S3Store, StoreError};

/// Ranges this close (bytes between them) are read in one request.
pub(crate) const MERGE_GAP: u64 = 64 << 10;
/// Range requests of one call in flight at once.
pub(crate) const RANGE_CONCURRENCY: usize = 16;
/// The most bytes one call reads into memory (after merging).
pub(crate) const MAX_RANGED_BYTES: u64 = 256 << 20;

/// `ranges` sorted, with those that overlap, touch or lie at most `gap`
/// bytes apart merged; empty ranges dropped.
pub(crate) fn merge_ranges(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// What a [`S3Store::get_ranges`] read: the merged ranges and their bytes.
#[derive(Debug, Default)]
pub(crate) struct RangeRead {
    pieces: Vec<(u64, Bytes)>,
}

impl RangeRead {
    /// Pieces read otherwise (e.g. decrypted): (offset, bytes), sorted by
    /// offset, disjoint.
    pub(crate) fn from_pieces(pieces: Vec<(u64, Bytes)>) -> RangeRead {
        RangeRead { pieces }
    }

    /// The bytes of `r`, if one piece read covers it.
    pub(crate) fn slice(&self, r: Range<u64>) -> Option<Bytes> {
        let i = self.pieces.partition_point(|(start, _)| *start <= r.start).checked_sub(1)?;
        let (start, data) = &self.pieces[i];
        let from = usize::try_from(r.start - start).ok()?;
        let to = usize::try_from(r.end.checked_sub(*start)?).ok()?;
        (from <= to && to <= data.len()).then(|| data.slice(from..to))
    }

    /// Bytes read in all (gaps included).
    pub(crate) fn bytes(&self) -> u64 {
        self.pieces.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// Requests made (one per merged range).
    pub(crate) fn requests(&self) -> usize {
        self.pieces.len()
    }
}

impl S3Store {
    /// Bytes `range` of `key`, in memory (at most [`MAX_RANGED_BYTES`]). A
    /// read that breaks off is made again (up to `DOWNLOAD_ATTEMPTS` in all).
    pub(crate) async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let len = range.end.saturating_sub(range.start);
        if len > MAX_RANGED_BYTES {
            return Err(self.other(key, format!("a ranged read of {len} bytes is above the {MAX_RANGED_BYTES}-byte bound")));
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.again_if_interrupted(key, || self.get_range_bytes_once(key, range.clone())).await
    }

    /// The bytes of every range of `ranges` of `key`: nearby ranges merged
    /// ([`merge_ranges`]: those at most `gap` bytes apart, e.g.
    /// [`MERGE_GAP`]), the requests run in parallel.
    /// Refused, before any request, when the merged ranges exceed
    /// [`MAX_RANGED_BYTES`].
    pub(crate) async fn get_ranges(&self, key: &str, ranges: &[Range<u64>], gap: u64) -> Result<RangeRead, StoreError> {
        let merged = merge_ranges(ranges, gap);
        let total: u64 = merged.iter().map(|r| r.end - r.start).sum();
        if total > MAX_RANGED_BYTES {
            return Err(self.other(key, format!("ranged reads of {total} bytes are above the {MAX_RANGED_BYTES}-byte bound")));
        }
        let span = tracing::debug_span!("s3.get_ranges", bucket = %self.bucket, key, asked = ranges.len(), requests = merged.len(), bytes = total);
        async {
            let reads: Vec<_> = merged.into_iter().map(|r| async move { self.get_range(key, r.clone()).await.map(|d| (r.start, d)) }).collect();
            let mut pieces: Vec<(u64, Bytes)> = futures::stream::iter(reads).buffer_unordered(RANGE_CONCURRENCY).try_collect().await?;
            pieces.sort_by_key(|(start, _)| *start);
            Ok(RangeRead { pieces })
        }
        .instrument(span)
        .await
    }

    async fn get_range_bytes_once(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (offset, len) = (range.start, range.end - range.start);
        let span = tracing::debug_span!("s3.get_range", bucket = %self.bucket, key, offset, len);
        async {
            let header = format!("bytes={}-{}", offset, range.end - 1);
            let send = |c: aws_sdk_s3::Client| c.get_object().bucket(&*self.bucket).key(key).range(&header).send();
            let resp = self.call(send).await.map_err(|e| self.classify(e, key))?;
            let mut body = resp.body;
            // Bounded by MAX_RANGED_BYTES (checked by the callers).
            let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            while let Some(chunk) = body.try_next().await.map_err(|e| self.interrupted(key, e.to_string()))? {
                if data.len() as u64 + chunk.len() as u64 > len {
                    // A server that ignores `Range` sends the whole object.
                    return Err(self.other(key, format!("range {offset}+{len}: the server sent more bytes than asked")));
                }
                data.extend_from_slice(&chunk);
            }
            if data.len() as u64 != len {
                return Err(self.interrupted(key, format!("got {} of {len} bytes at offset {offset}", data.len())));
            }
            Ok(Bytes::from(data))
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_ranges_are_merged_and_distant_ones_kept_apart() {
        assert_eq!(merge_ranges(&[], 10), Vec::<Range<u64>>::new());
        // unsorted input, an overlap, a touching pair, an empty range
        assert_eq!(merge_ranges(&[50..60, 0..10, 5..20, 20..25, 30..30], 0), vec![0..25, 50..60]);
        // a gap of exactly `gap` is merged, one byte more is not
        assert_eq!(merge_ranges(&[0..10, 20..30], 10), vec![0..30]);
        assert_eq!(merge_ranges(&[0..10, 21..30], 10), vec![0..10, 21..30]);
        // a range inside another
        assert_eq!(merge_ranges(&[0..100, 10..20], 0), vec![0..100]);
        // with the real gap: entries of a pack 1 KiB apart are one request
        let entries: Vec<Range<u64>> = (0..100u64).map(|i| i * 2048..i * 2048 + 1024).collect();
        assert_eq!(merge_ranges(&entries, MERGE_GAP), vec![0..99 * 2048 + 1024]);
        let far: Vec<Range<u64>> = (0..4u64).map(|i| i * (1 << 20)..i * (1 << 20) + 10).collect();
        assert_eq!(merge_ranges(&far, MERGE_GAP).len(), 4);
    }

    #[test]
    fn a_read_hands_out_the_asked_ranges_of_its_pieces() {
        let read = RangeRead { pieces: vec![(100, Bytes::from_static(b"abcdefghij")), (1000, Bytes::from_static(b"xyz"))] };
        assert_eq!(read.slice(100..103).as_deref(), Some(&b"abc"[..]));
        assert_eq!(read.slice(105..110).as_deref(), Some(&b"fghij"[..]));
        assert_eq!(read.slice(1001..1003).as_deref(), Some(&b"yz"[..]));
        assert_eq!(read.slice(105..111), None, "past a piece's end");
        assert_eq!(read.slice(50..60), None, "before any piece");
        assert_eq!(read.slice(500..510), None, "between pieces");
        assert_eq!(read.bytes(), 13);
        assert_eq!(read.requests(), 2);
    }
}
