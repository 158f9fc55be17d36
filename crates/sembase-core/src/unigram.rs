//! A Unigram (SentencePiece) tokenizer model kept compact: the pieces in one string and
//! their prefix trie in flat arrays. The tokenizers library's own Unigram model holds a
//! hash map in every trie node; for XLM-R's 250k pieces that is about 200 MB and most
//! of a second to build, where this takes about 20 MB. It plugs into the library's
//! pipeline (normalizer, pre-tokenizer, post-processor) as its `Model` and yields the
//! same tokens: the same best-path search, ties going to the path found first, runs of
//! unknown characters fused into one token, byte pieces as the fallback when asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::{Model, Token};

/// Score given below the lowest piece score to an unknown character (the library's
/// and SentencePiece's penalty).
const UNKNOWN_PENALTY: f64 = 10.0;

/// Marks a trie node at which no piece ends.
const NO_PIECE: u32 = u32::MAX;

/// A Unigram vocabulary with its scores, ready to tokenize.
pub struct CompactUnigram {
    /// Every piece, one after another.
    text: String,
    /// Where piece `i` ends in `text` (it starts where piece `i - 1` ends).
    ends: Vec<u32>,
    scores: Vec<f64>,
    trie: PieceTrie,
    unk_id: Option<u32>,
    /// The lowest piece score.
    min_score: f64,
    /// Spell pieces the vocabulary lacks as `<0xXX>` byte pieces.
    byte_fallback: bool,
}

impl std::fmt::Debug for CompactUnigram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompactUnigram({} pieces)", self.ends.len())
    }
}

/// Keeps `candidate` at a position when no path reached it yet or it scores higher
/// (so of equal scores the first found stays).
fn offer(best: &mut PathEnd, candidate: PathEnd) {
    if best.start == usize::MAX || candidate.score > best.score {
        *best = candidate;
    }
}

/// One best path found so far: it ends at some byte position and its last token starts
/// at `start` (`usize::MAX` while no path reaches the position).
#[derive(Clone, Copy)]
struct PathEnd {
    score: f64,
    start: usize,
    unknown: bool,
}

impl CompactUnigram {
    /// Builds the model from `(piece, score)` pairs in id order. Where a piece appears
    /// twice its later id is the one text maps to (as in the library).
    pub fn new(
        vocab: Vec<(String, f64)>,
        unk_id: Option<usize>,
        byte_fallback: bool,
    ) -> Result<Self, String> {
        if let Some(unk) = unk_id {
            if unk >= vocab.len() {
                return Err(format!(
                    "unk_id {unk} is outside the vocabulary of {} pieces",
                    vocab.len()
                ));
            }
        }
        let total: usize = vocab.iter().map(|(piece, _)| piece.len()).sum();
        if vocab.len() >= NO_PIECE as usize || total > u32::MAX as usize {
            return Err(format!(
                "a vocabulary of {} pieces ({total} bytes) is too large",
                vocab.len()
            ));
        }
        let mut text = String::with_capacity(total);
        let mut ends = Vec::with_capacity(vocab.len());
        let mut scores = Vec::with_capacity(vocab.len());
        for (piece, score) in vocab {
            text.push_str(&piece);
            ends.push(text.len() as u32);
            scores.push(score);
        }
        let min_score = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let mut model = Self {
            text,
            ends,
            scores,
            trie: PieceTrie::default(),
            unk_id: unk_id.map(|u| u as u32),
            min_score,
            byte_fallback,
        };
        model.trie = PieceTrie::build(|id| model.piece(id).as_bytes(), model.ends.len() as u32);
        Ok(model)
    }

    /// The text of piece `id`.
    fn piece(&self, id: u32) -> &str {
        let end = self.ends[id as usize] as usize;
        let start = if id == 0 { 0 } else { self.ends[id as usize - 1] as usize };
        &self.text[start..end]
    }

    /// The byte ranges of `sentence`'s tokens on its best path. Unknown tokens (characters
    /// no piece covers, or the unknown piece itself) next to each other make one range.
    fn best_path(&self, sentence: &str) -> tokenizers::Result<Vec<(usize, usize)>> {
        let unknown_score = self.min_score - UNKNOWN_PENALTY;
        let mut ends =
            vec![PathEnd { score: 0.0, start: usize::MAX, unknown: false }; sentence.len() + 1];
        for (start, ch) in sentence.char_indices() {
            let so_far = ends[start].score;
            let char_len = ch.len_utf8();
            let mut whole_char_piece = false;
            for (len, id) in self.trie.prefixes(&sentence.as_bytes()[start..]) {
                let unknown = Some(id) == self.unk_id;
                offer(
                    &mut ends[start + len],
                    PathEnd { score: so_far + self.scores[id as usize], start, unknown },
                );
                whole_char_piece |= len == char_len;
            }
            if !whole_char_piece {
                if self.unk_id.is_none() {
                    return Err(Self::missing_unk());
                }
                offer(
                    &mut ends[start + char_len],
                    PathEnd { score: so_far + unknown_score, start, unknown: true },
                );
            }
        }
        let mut tokens: Vec<(usize, usize)> = Vec::new();
        let (mut end, mut after_unknown) = (sentence.len(), false);
        while end > 0 {
            let PathEnd { start, unknown, .. } = ends[end];
            match tokens.last_mut() {
                // Walking backwards: an unknown run grows to the left.
                Some((run_start, _)) if unknown && after_unknown => *run_start = start,
                _ => tokens.push((start, end)),
            }
            (end, after_unknown) = (start, unknown);
        }
        tokens.reverse();
        Ok(tokens)
    }

    /// Byte pieces spelling `text`, when the vocabulary has every one of them.
    fn byte_pieces(&self, text: &str) -> Option<Vec<u32>> {
        text.bytes().map(|b| self.token_to_id(&format!("<0x{b:02X}>"))).collect()
    }

    /// The error for an unknown character when the model has no unknown piece.
    fn missing_unk() -> tokenizers::Error {
        "the text has characters outside the Unigram vocabulary and the model has no unk_id".into()
    }
}

impl Model for CompactUnigram {
    type Trainer = UnigramTrainer;

    fn tokenize(&self, sentence: &str) -> tokenizers::Result<Vec<Token>> {
        let mut tokens = Vec::new();
        for (start, end) in self.best_path(sentence)? {
            let value = &sentence[start..end];
            let offsets = (start, end);
            if let Some(id) = self.token_to_id(value) {
                tokens.push(Token::new(id, value.to_string(), offsets));
                continue;
            }
            let bytes = if self.byte_fallback { self.byte_pieces(value) } else { None };
            match bytes {
                Some(ids) => tokens.extend(
                    ids.into_iter().map(|id| Token::new(id, self.piece(id).to_string(), offsets)),
                ),
                None => tokens.push(Token::new(
                    self.unk_id.ok_or_else(Self::missing_unk)?,
                    value.to_string(),
                    offsets,
                )),
            }
        }
        Ok(tokens)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.trie.exact(token.as_bytes())
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        ((id as usize) < self.ends.len()).then(|| self.piece(id).to_string())
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.ends.len() as u32).map(|id| (self.piece(id).to_string(), id)).collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.ends.len()
    }

    fn save(&self, folder: &Path, prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        let vocab: Vec<(&str, f64)> = (0..self.ends.len() as u32)
            .map(|id| (self.piece(id), self.scores[id as usize]))
            .collect();
        let json = serde_json::json!({ "type": "Unigram", "unk_id": self.unk_id, "vocab": vocab, "byte_fallback": self.byte_fallback });
        let path =
            folder.join(prefix.map_or("unigram.json".to_string(), |p| format!("{p}-unigram.json")));
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        Ok(vec![path])
    }

    fn get_trainer(&self) -> UnigramTrainer {
        UnigramTrainer::default()
    }
}

/// The `model` object of a `tokenizer.json` whose type is `Unigram`.
#[derive(Deserialize)]
struct UnigramJson {
    #[serde(rename = "type")]
    kind: String,
    unk_id: Option<usize>,
    vocab: Vec<(String, f64)>,
    #[serde(default)]
    byte_fallback: bool,
}

impl<'de> Deserialize<'de> for CompactUnigram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = UnigramJson::deserialize(deserializer)?;
        if json.kind != "Unigram" {
            return Err(serde::de::Error::custom(format!(
                "model type {:?} is not Unigram",
                json.kind
            )));
        }
        Self::new(json.vocab, json.unk_id, json.byte_fallback).map_err(serde::de::Error::custom)
    }
}

/// A byte trie of the pieces in flat arrays: each node's outgoing edges lie side by
/// side, sorted by byte.
#[derive(Default)]
struct PieceTrie {
    nodes: Vec<TrieNode>,
    edge_bytes: Vec<u8>,
    edge_targets: Vec<u32>,
}

#[derive(Clone, Copy)]
struct TrieNode {
    first_edge: u32,
    edge_count: u16,
    /// The piece that ends here, or `NO_PIECE`.
    piece: u32,
}

impl PieceTrie {
    /// The trie of pieces `0..count`, whose bytes `piece` gives; of equal pieces the
    /// highest id is kept. An empty piece ends at the root, where no search of text
    /// looks (it only answers an exact lookup of "").
    fn build<'a>(piece: impl Fn(u32) -> &'a [u8], count: u32) -> Self {
        let mut order: Vec<u32> = (0..count).collect();
        order.sort_by(|&a, &b| piece(a).cmp(piece(b)).then(a.cmp(&b)));
        let mut trie = Self {
            nodes: vec![TrieNode { first_edge: 0, edge_count: 0, piece: NO_PIECE }],
            ..Self::default()
        };
        // (node, its pieces as a range of `order`, depth): every piece in the range
        // starts with the node's `depth` bytes.
        let mut pending = vec![(0usize, 0usize, order.len(), 0usize)];
        while let Some((node, mut lo, hi, depth)) = pending.pop() {
            while lo < hi && piece(order[lo]).len() == depth {
                trie.nodes[node].piece = order[lo];
                lo += 1;
            }
            let first_edge = trie.edge_bytes.len();
            let mut group_start = lo;
            while group_start < hi {
                let byte = piece(order[group_start])[depth];
                let group_end = group_start
                    + order[group_start..hi].partition_point(|&id| piece(id)[depth] == byte);
                let child = trie.nodes.len();
                trie.nodes.push(TrieNode { first_edge: 0, edge_count: 0, piece: NO_PIECE });
                trie.edge_bytes.push(byte);
                trie.edge_targets.push(child as u32);
                pending.push((child, group_start, group_end, depth + 1));
                group_start = group_end;
            }
            trie.nodes[node].first_edge = first_edge as u32;
            trie.nodes[node].edge_count = (trie.edge_bytes.len() - first_edge) as u16;
        }
        trie
    }

    /// The node reached from `node` over `byte`.
    fn child(&self, node: u32, byte: u8) -> Option<u32> {
        let TrieNode { first_edge, edge_count, .. } = self.nodes[node as usize];
        let range = first_edge as usize..first_edge as usize + edge_count as usize;
        self.edge_bytes[range.clone()]
            .binary_search(&byte)
            .ok()
            .map(|i| self.edge_targets[range.start + i])
    }

    /// `(length, piece)` of every piece that `bytes` starts with, shortest first.
    fn prefixes<'a>(&'a self, bytes: &'a [u8]) -> impl Iterator<Item = (usize, u32)> + 'a {
        let mut node = Some(0u32);
        bytes
            .iter()
            .enumerate()
            .map_while(move |(i, &byte)| {
                node = self.child(node?, byte);
                Some((i + 1, node?))
            })
            .filter_map(|(len, node)| {
                let piece = self.nodes[node as usize].piece;
                (piece != NO_PIECE).then_some((len, piece))
            })
    }

    /// The piece that is exactly `bytes`.
    fn exact(&self, bytes: &[u8]) -> Option<u32> {
        let node = bytes.iter().try_fold(0u32, |node, &byte| self.child(node, byte))?;
        let piece = self.nodes[node as usize].piece;
        (piece != NO_PIECE).then_some(piece)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tokenizers::models::unigram::Unigram;

    use super::*;

    /// Characters of the random vocabularies and texts: one to four bytes long, and
    /// two ('z', '☃') that no single-character piece covers.
    const ALPHABET: [char; 7] = ['a', 'b', '▁', 'é', '中', 'z', '☃'];

    fn random_string(rng: &mut StdRng, alphabet: &[char], max_len: usize) -> String {
        let len = rng.random_range(1..=max_len);
        (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
    }

    /// A vocabulary of short pieces with few distinct scores (so equal-scoring paths are
    /// common), duplicates, the unknown piece's own text, and byte pieces for 'z' only.
    fn random_vocab(rng: &mut StdRng) -> Vec<(String, f64)> {
        let mut vocab = vec![("<unk>".to_string(), 0.0), ("<0x7A>".to_string(), -4.0)];
        vocab.extend(['a', 'b', '▁', 'é', '中'].map(|c| (c.to_string(), -3.0)));
        for _ in 0..60 {
            let piece = random_string(rng, &ALPHABET[..5], 4);
            vocab.push((piece, -f64::from(rng.random_range(1..4u8))));
        }
        vocab.push(("ab".to_string(), -1.5));
        vocab.push(("ab".to_string(), -1.0));
        vocab.push(("a<unk>".to_string(), -1.0));
        vocab
    }

    /// A token as compared: id, text and byte offsets.
    type Seen = (u32, String, (usize, usize));

    fn tokens(model: &impl Model, text: &str) -> Option<Vec<Seen>> {
        let tokens = model.tokenize(text).ok()?;
        Some(tokens.into_iter().map(|t| (t.id, t.value, t.offsets)).collect())
    }

    #[test]
    fn tokens_match_the_library_unigram_on_random_vocabularies_and_texts() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut text_alphabet = ALPHABET.to_vec();
        text_alphabet.extend(['<', 'u', 'n', 'k', '>']);
        for round in 0..12 {
            let vocab = random_vocab(&mut rng);
            let (unk_id, byte_fallback) =
                [(Some(0), false), (Some(0), true), (None, false)][round % 3];
            let library = Unigram::from(vocab.clone(), unk_id, byte_fallback).unwrap();
            let ours = CompactUnigram::new(vocab.clone(), unk_id, byte_fallback).unwrap();
            // The unknown piece's own text next to unknown characters is fused with them.
            let fixed = [
                "z<unk>☃",
                "a<unk>z",
                "<unk><unk>",
                "☃<unk>",
                "<unk>",
                "ab<unk>ab",
                "zzz",
                "<0x7A>",
            ]
            .map(String::from);
            for text in fixed
                .into_iter()
                .chain((0..300).map(|_| random_string(&mut rng, &text_alphabet, 24)))
            {
                assert_eq!(
                    tokens(&ours, &text),
                    tokens(&library, &text),
                    "round {round}, text {text:?}"
                );
            }
            for (id, (piece, _)) in vocab.iter().enumerate() {
                assert_eq!(ours.token_to_id(piece), library.token_to_id(piece), "piece {piece:?}");
                assert_eq!(ours.id_to_token(id as u32).as_deref(), Some(piece.as_str()));
            }
            assert_eq!(ours.get_vocab(), library.get_vocab());
            assert_eq!(ours.get_vocab_size(), library.get_vocab_size());
        }
    }

    #[test]
    fn refuses_an_unk_id_outside_the_vocabulary_and_a_wrong_model_type() {
        assert!(CompactUnigram::new(vec![("a".to_string(), -1.0)], Some(1), false).is_err());
        let json = r#"{"type": "BPE", "unk_id": null, "vocab": [["a", -1.0]]}"#;
        let error = serde_json::from_str::<CompactUnigram>(json).unwrap_err().to_string();
        assert!(error.contains("not Unigram"), "{error}");
        let json = r#"{"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}"#;
        let model = serde_json::from_str::<CompactUnigram>(json).unwrap();
        assert_eq!(
            tokens(&model, "aza").unwrap().iter().map(|t| t.0).collect::<Vec<_>>(),
            [1, 0, 1]
        );
    }
}
