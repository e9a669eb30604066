//! Near-duplicate detection for Japanese text: character n-gram shingles (no word
//! segmentation needed), MinHash signatures, and LSH banding to find candidate pairs without
//! comparing every pair; candidates are then checked with the exact Jaccard similarity.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinHashParams {
    /// Characters per shingle.
    pub ngram: usize,
    /// Hash functions per signature.
    pub hashes: usize,
    /// LSH bands; `hashes / bands` rows each. More bands find lower similarities.
    pub bands: usize,
}

impl Default for MinHashParams {
    /// 3-grams, 128 hashes, 32 bands of 4: a pair at Jaccard 0.5 becomes a candidate with
    /// probability 1 - (1 - 0.5⁴)³² ≈ 0.87, and at 0.7 with ≈ 1.0.
    fn default() -> Self {
        Self {
            ngram: 3,
            hashes: 128,
            bands: 32,
        }
    }
}

/// SplitMix64's finalizer: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The set of hashed character n-grams of `text` (sorted), whitespace removed so that line
/// breaks and spacing do not hide a copy. Texts shorter than `n` are one shingle.
pub fn shingles(text: &str, n: usize) -> Vec<u64> {
    let chars: Vec<char> = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let n = n.max(1).min(chars.len());
    let mut out: Vec<u64> = chars
        .windows(n)
        .map(|w| {
            w.iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, c| mix(h ^ *c as u64))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The MinHash signature: for each of `hashes` hash functions, the least hash over the set.
pub fn signature(shingles: &[u64], hashes: usize) -> Vec<u64> {
    (0..hashes as u64)
        .map(|i| {
            let salt = mix(i.wrapping_add(0x5EED));
            shingles
                .iter()
                .map(|&s| mix(s ^ salt))
                .min()
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// Fraction of equal signature positions: an unbiased estimate of the Jaccard similarity.
pub fn estimate(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Exact Jaccard similarity of two sorted sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common as f64 / (a.len() + b.len() - common) as f64
}

/// A pair of texts (indices, `a < b`) at or above the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct DupPair {
    pub a: usize,
    pub b: usize,
    pub estimate: f64,
    pub jaccard: f64,
}

/// Every pair of texts whose exact Jaccard similarity is at least `threshold`, found through
/// LSH candidates. Sorted by `(b, a)`.
pub fn near_duplicates(texts: &[&str], params: MinHashParams, threshold: f64) -> Vec<DupPair> {
    let sets: Vec<Vec<u64>> = texts.iter().map(|t| shingles(t, params.ngram)).collect();
    let sigs: Vec<Vec<u64>> = sets.iter().map(|s| signature(s, params.hashes)).collect();
    let bands = params.bands.clamp(1, params.hashes.max(1));
    let rows = (params.hashes / bands).max(1);
    let mut candidates: HashSet<(usize, usize)> = HashSet::new();
    for band in 0..bands {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, sig) in sigs.iter().enumerate() {
            if sets[i].is_empty() {
                continue;
            }
            let slice = &sig[band * rows..((band + 1) * rows).min(sig.len())];
            let key = slice.iter().fold(band as u64, |h, x| mix(h ^ x));
            buckets.entry(key).or_default().push(i);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            for (x, &a) in members.iter().enumerate() {
                for &b in &members[x + 1..] {
                    candidates.insert((a.min(b), a.max(b)));
                }
            }
        }
    }
    let mut out: Vec<DupPair> = candidates
        .into_iter()
        .filter_map(|(a, b)| {
            let j = jaccard(&sets[a], &sets[b]);
            (j >= threshold).then(|| DupPair {
                a,
                b,
                estimate: estimate(&sigs[a], &sigs[b]),
                jaccard: j,
            })
        })
        .collect();
    out.sort_by_key(|p| (p.b, p.a));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "正義とは何だろうか。友よ、きみは正義を強い者の利益だと言ったね。では、靴職人が自分の利益のために靴を作るとき、それは正しい仕事と言えるのだろうか。私にはよくわからないのだが、ぜひ教えてくれないか。";

    #[test]
    fn finds_a_planted_near_duplicate_and_not_unrelated_texts() {
        // The same utterance with a few words changed and different line breaks.
        let planted = "正義とは何だろうか。\n友よ、きみは正義を強い者の利益だと言ったね。では、大工が自分の利益のために家を作るとき、それは正しい仕事と言えるのだろうか。私にはよくわからないのだが、ぜひ教えてくれないか。";
        let texts = [
            BASE,
            "幸福とは何だろうか。きみは富を持つ者が幸福だと言う。では、病に伏した金持ちは幸福だろうか。",
            "勇気とは、恐れるべきものと恐れるべきでないものを知ることだろうか。戦場の兵士を考えてみよう。",
            planted,
            "The quick brown fox jumps over the lazy dog.",
        ];
        let pairs = near_duplicates(&texts, MinHashParams::default(), 0.6);
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        let p = &pairs[0];
        assert_eq!((p.a, p.b), (0, 3));
        assert!(
            p.jaccard > 0.7 && (p.estimate - p.jaccard).abs() < 0.2,
            "{p:?}"
        );
    }

    #[test]
    fn identical_texts_are_jaccard_one_and_estimates_track_jaccard() {
        let a = shingles(BASE, 3);
        assert_eq!(jaccard(&a, &shingles(&BASE.replace('。', "。 "), 3)), 1.0);
        let half: String = BASE.chars().take(BASE.chars().count() / 2).collect();
        let b = shingles(&half, 3);
        let j = jaccard(&a, &b);
        let e = estimate(&signature(&a, 256), &signature(&b, 256));
        assert!((e - j).abs() < 0.12, "estimate {e} vs exact {j}");
        assert_eq!(shingles("ab", 3).len(), 1);
        assert!(shingles("  ", 3).is_empty());
    }
}
