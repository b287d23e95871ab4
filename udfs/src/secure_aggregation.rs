//! Secure aggregation: the coordinator learns the sum of the clients'
//! updates, never one client's update.
//!
//! The protocol is SecAgg (Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning", CCS 2017), which Flower's SecAgg+
//! also implements, with Flower's quantization defaults. Per round, over the
//! weight exchange's bulletin board:
//!
//! 1. **keys** — each client posts a fresh X25519 public key.
//! 2. **shares** — each client Shamir-splits (threshold `t` of `n`) its
//!    secret key and a fresh self-mask seed, and posts one share of each to
//!    every peer, encrypted and authenticated with a key derived from their
//!    Diffie-Hellman secret (so the coordinator, which relays them, cannot
//!    read them).
//! 3. **masked input** — each client quantizes its weighted update into
//!    `u32`s and adds `PRG(self seed)` and, for each peer `j`, `±PRG(s_ij)`
//!    (`+` when `j` comes after it, `−` before; `s_ij` from their
//!    Diffie-Hellman secret). Summed mod 2^32 the pairwise masks cancel.
//! 4. **unmask** — the coordinator names the survivors and the dropouts;
//!    each survivor reveals its shares of the survivors' self seeds and of
//!    the dropouts' secret keys, never both for one client. With `t` shares
//!    the coordinator removes the self masks and the dropouts' pairwise
//!    masks, and is left with the sum.
//!
//! The coordinator sees masked vectors that are uniformly random on their
//! own, and the sum. Threat model: an honest-but-curious coordinator and
//! fewer than `t` colluding clients; messages are not signed, so a
//! coordinator that forges messages is out of scope (SecAgg's "active"
//! variant adds signatures).

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::{Result, UdfError};

/// Values are clipped to ±this before quantization (Flower's
/// `clipping_range`).
pub const CLIPPING_RANGE: f32 = 8.0;
/// Quantization levels over the clipping range (Flower's
/// `quantization_range`); sums of up to 2^32 / this many clients fit.
pub const QUANTIZATION_RANGE: u32 = 1 << 22;

/// The most clients one secure round can sum without overflowing `u32`.
pub const MAX_CLIENTS: usize = (u32::MAX / QUANTIZATION_RANGE) as usize;

/// Shares needed to reconstruct a secret among `n` clients: a majority
/// (at least 2), so no minority of clients can unmask anyone.
pub fn threshold(n: usize) -> usize {
    (n / 2 + 1).max(2).min(n)
}

fn error(message: impl Into<String>) -> UdfError {
    UdfError::Training(format!("secure aggregation: {}", message.into()))
}

// ---------------------------------------------------------------------------
// Shamir secret sharing over GF(2^61 - 1), a 32-byte secret as five 7-byte
// field elements.

const P: u64 = (1 << 61) - 1;
const LIMBS: usize = 5;
const LIMB_BYTES: usize = 7;

fn mul(a: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(P)) as u64
}

fn add(a: u64, b: u64) -> u64 {
    (a + b) % P
}

fn sub(a: u64, b: u64) -> u64 {
    (a + P - b) % P
}

fn inverse(a: u64) -> u64 {
    // Fermat: a^(p-2).
    let (mut base, mut exp, mut out) = (a, P - 2, 1);
    while exp > 0 {
        if exp & 1 == 1 {
            out = mul(out, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    out
}

/// One share of a 32-byte secret: the polynomials' values at `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub x: u64,
    pub y: [u64; LIMBS],
}

impl Share {
    const BYTES: usize = 8 * (1 + LIMBS);

    fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::BYTES);
        out.extend_from_slice(&self.x.to_le_bytes());
        for y in self.y {
            out.extend_from_slice(&y.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Share> {
        if bytes.len() != Self::BYTES {
            return Err(error("a share has the wrong length"));
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_le_bytes(b)
        };
        let mut y = [0u64; LIMBS];
        for (i, v) in y.iter_mut().enumerate() {
            *v = word(i + 1);
        }
        Ok(Share { x: word(0), y })
    }
}

fn limbs(secret: &[u8; 32]) -> [u64; LIMBS] {
    let mut out = [0u64; LIMBS];
    for (i, chunk) in secret.chunks(LIMB_BYTES).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(b);
    }
    out
}

fn unlimbs(values: [u64; LIMBS]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(LIMB_BYTES).enumerate() {
        let bytes = values[i].to_le_bytes();
        // A wrong reconstruction shows as a value wider than its chunk.
        if bytes[chunk.len()..].iter().any(|b| *b != 0) {
            return Err(error("a secret did not reconstruct (inconsistent shares)"));
        }
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    Ok(out)
}

/// `n` shares of `secret`, any `t` of which reconstruct it; share `k` is
/// the polynomials' value at `x = k + 1`.
pub fn split(secret: &[u8; 32], n: usize, t: usize, rng: &mut impl RngCore) -> Vec<Share> {
    let constant = limbs(secret);
    let coefficients: Vec<[u64; LIMBS]> = (1..t)
        .map(|_| std::array::from_fn(|_| rng.random_range(0..P)))
        .collect();
    (1..=n as u64)
        .map(|x| {
            let y = std::array::from_fn(|l| {
                // Horner's rule, highest coefficient first.
                let mut acc = 0;
                for c in coefficients.iter().rev() {
                    acc = add(mul(acc, x), c[l]);
                }
                add(mul(acc, x), constant[l])
            });
            Share { x, y }
        })
        .collect()
}

/// The secret from `t` or more shares (Lagrange interpolation at 0).
pub fn reconstruct(shares: &[Share], t: usize) -> Result<[u8; 32]> {
    let distinct: BTreeMap<u64, Share> = shares.iter().map(|s| (s.x, *s)).collect();
    if distinct.len() < t {
        return Err(error(format!(
            "{} share(s) of a secret arrived, {t} are needed",
            distinct.len()
        )));
    }
    let used: Vec<Share> = distinct.into_values().take(t).collect();
    let mut secret = [0u64; LIMBS];
    for (i, si) in used.iter().enumerate() {
        let mut weight = 1;
        for (j, sj) in used.iter().enumerate() {
            if i != j {
                weight = mul(weight, mul(sj.x, inverse(sub(sj.x, si.x))));
            }
        }
        for (l, value) in secret.iter_mut().enumerate() {
            *value = add(*value, mul(si.y[l], weight));
        }
    }
    unlimbs(secret)
}

// ---------------------------------------------------------------------------
// Keys, masks and share encryption.

fn derive(context: &str, material: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in material {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// The mask `PRG(seed)` of `len` words.
fn mask_words(seed: [u8; 32], len: usize) -> impl Iterator<Item = u32> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    (0..len).map(move |_| rng.next_u32())
}

fn pairwise_seed(secret: &StaticSecret, peer: &[u8; 32]) -> [u8; 32] {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    derive("fedsql secagg v1 pairwise mask", &[shared.as_bytes()])
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Encrypts (ChaCha20 keystream) and authenticates (keyed BLAKE3) `plain`
/// for the pair `from → to`.
fn seal(shared: &[u8; 32], from: &str, to: &str, plain: &[u8]) -> Vec<u8> {
    let material: [&[u8]; 3] = [shared, from.as_bytes(), to.as_bytes()];
    let key = derive("fedsql secagg v1 share encryption", &material);
    let mac = derive("fedsql secagg v1 share authentication", &material);
    let mut stream = ChaCha20Rng::from_seed(key);
    let mut out: Vec<u8> = plain
        .iter()
        .map(|b| b ^ (stream.next_u32() as u8))
        .collect();
    let tag = blake3::keyed_hash(&mac, &out);
    out.extend_from_slice(tag.as_bytes());
    out
}

fn open(shared: &[u8; 32], from: &str, to: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let split_at = sealed
        .len()
        .checked_sub(32)
        .ok_or_else(|| error("a sealed share is too short"))?;
    let (body, tag) = sealed.split_at(split_at);
    let material: [&[u8]; 3] = [shared, from.as_bytes(), to.as_bytes()];
    let key = derive("fedsql secagg v1 share encryption", &material);
    let mac = derive("fedsql secagg v1 share authentication", &material);
    if blake3::keyed_hash(&mac, body) != blake3::Hash::from_bytes(tag_array(tag)?) {
        return Err(error(format!("the shares from {from} do not authenticate")));
    }
    let mut stream = ChaCha20Rng::from_seed(key);
    Ok(body.iter().map(|b| b ^ (stream.next_u32() as u8)).collect())
}

fn tag_array(tag: &[u8]) -> Result<[u8; 32]> {
    tag.try_into().map_err(|_| error("bad authentication tag"))
}

/// Which secret a revealed share belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Secret {
    /// A survivor's self-mask seed.
    SelfSeed,
    /// A dropout's key-agreement secret key.
    SecretKey,
}

/// One share a survivor reveals in the unmask stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reveal {
    pub owner: String,
    pub secret: Secret,
    pub share: Vec<u8>,
}

/// One client's side of the protocol for one round.
pub struct SecAggClient {
    name: String,
    secret: StaticSecret,
    self_seed: [u8; 32],
    /// Shares other clients sent this one: `(secret key share, self seed
    /// share)` by owner; its own included.
    held: BTreeMap<String, (Share, Share)>,
}

impl std::fmt::Debug for SecAggClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("SecAggClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SecAggClient {
    /// A client `name` with fresh keys (new every round).
    pub fn new(name: &str) -> SecAggClient {
        SecAggClient {
            name: name.to_string(),
            secret: StaticSecret::from(random_bytes()),
            self_seed: random_bytes(),
            held: BTreeMap::new(),
        }
    }

    /// What stage 1 posts.
    pub fn public_key(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// Stage 2: the sealed shares for each peer in `peers` (every client
    /// that posted a key, this one included, in the round's order).
    pub fn shares_for(&mut self, peers: &[(String, [u8; 32])]) -> Result<Vec<(String, Vec<u8>)>> {
        let t = threshold(peers.len());
        let mut rng = ChaCha20Rng::from_seed(random_bytes());
        let key_shares = split(&self.secret.to_bytes(), peers.len(), t, &mut rng);
        let seed_shares = split(&self.self_seed, peers.len(), t, &mut rng);
        let mut out = Vec::new();
        for (k, (peer, public)) in peers.iter().enumerate() {
            if *peer == self.name {
                self.held
                    .insert(self.name.clone(), (key_shares[k], seed_shares[k]));
                continue;
            }
            let mut plain = key_shares[k].to_bytes();
            plain.extend(seed_shares[k].to_bytes());
            let shared = self.secret.diffie_hellman(&PublicKey::from(*public));
            out.push((
                peer.clone(),
                seal(shared.as_bytes(), &self.name, peer, &plain),
            ));
        }
        Ok(out)
    }

    /// Stage 2: keeps the shares `from` sealed for this client.
    pub fn receive(&mut self, from: &str, public: &[u8; 32], sealed: &[u8]) -> Result<()> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*public));
        let plain = open(shared.as_bytes(), from, &self.name, sealed)?;
        if plain.len() != 2 * Share::BYTES {
            return Err(error(format!(
                "the shares from {from} have the wrong length"
            )));
        }
        let key = Share::from_bytes(&plain[..Share::BYTES])?;
        let seed = Share::from_bytes(&plain[Share::BYTES..])?;
        self.held.insert(from.to_string(), (key, seed));
        Ok(())
    }

    /// Stage 3: `values` quantized with weight `scale` and masked, for the
    /// clients in `peers` (those that sent shares, this one included, in
    /// the round's order).
    pub fn mask(&self, peers: &[(String, [u8; 32])], values: &[f32], scale: f64) -> Vec<u32> {
        let mut out = quantize(values, scale);
        add_mask(&mut out, self.self_seed, true);
        let position = peers.iter().position(|(p, _)| *p == self.name);
        for (k, (peer, public)) in peers.iter().enumerate() {
            if *peer == self.name {
                continue;
            }
            let seed = pairwise_seed(&self.secret, public);
            add_mask(&mut out, seed, Some(k) > position);
        }
        out
    }

    /// Stage 4: this client's shares of the survivors' self seeds and the
    /// dropouts' secret keys. A client named in both lists is refused: both
    /// shares would unmask its input.
    pub fn reveal(&self, survivors: &[String], dropped: &[String]) -> Result<Vec<Reveal>> {
        let alive: BTreeSet<&String> = survivors.iter().collect();
        if let Some(both) = dropped.iter().find(|d| alive.contains(d)) {
            return Err(error(format!(
                "the coordinator named {both} both a survivor and a dropout"
            )));
        }
        let mut out = Vec::new();
        for (owner, secret) in survivors
            .iter()
            .map(|s| (s, Secret::SelfSeed))
            .chain(dropped.iter().map(|d| (d, Secret::SecretKey)))
        {
            if let Some((key, seed)) = self.held.get(owner) {
                let share = match secret {
                    Secret::SelfSeed => seed,
                    Secret::SecretKey => key,
                };
                out.push(Reveal {
                    owner: owner.clone(),
                    secret,
                    share: share.to_bytes(),
                });
            }
        }
        Ok(out)
    }
}

fn add_mask(values: &mut [u32], seed: [u8; 32], plus: bool) {
    let len = values.len();
    for (v, m) in values.iter_mut().zip(mask_words(seed, len)) {
        *v = if plus {
            v.wrapping_add(m)
        } else {
            v.wrapping_sub(m)
        };
    }
}

/// `values × scale`, clipped to ±[`CLIPPING_RANGE`], as levels in
/// `0..=QUANTIZATION_RANGE`.
pub fn quantize(values: &[f32], scale: f64) -> Vec<u32> {
    let c = f64::from(CLIPPING_RANGE);
    let levels = f64::from(QUANTIZATION_RANGE);
    values
        .iter()
        .map(|v| {
            let x = (f64::from(*v) * scale).clamp(-c, c);
            ((x + c) / (2.0 * c) * levels).round() as u32
        })
        .collect()
}

/// The sum of `clients` quantized vectors back in the values' units.
pub fn dequantize(sum: &[u32], clients: usize) -> Vec<f32> {
    let c = f64::from(CLIPPING_RANGE);
    let step = 2.0 * c / f64::from(QUANTIZATION_RANGE);
    sum.iter()
        .map(|s| (f64::from(*s) * step - clients as f64 * c) as f32)
        .collect()
}

/// The coordinator's stage 4: the sum (mod 2^32) of the survivors'
/// quantized inputs, from their masked inputs and the revealed shares.
///
/// `peers` are the clients that sent shares (public keys, round order);
/// `masked` the survivors' masked inputs; the rest of `peers` dropped out.
/// `t` is the threshold the secrets were split with (that of the clients
/// that posted keys).
pub fn unmask(
    peers: &[(String, [u8; 32])],
    masked: &[(String, Vec<u32>)],
    reveals: &[Reveal],
    t: usize,
) -> Result<Vec<u32>> {
    let len = masked.first().map_or(0, |(_, m)| m.len());
    let mut sum = vec![0u32; len];
    for (client, values) in masked {
        if values.len() != len {
            return Err(error(format!(
                "{client} sent {} values, not {len}",
                values.len()
            )));
        }
        for (s, v) in sum.iter_mut().zip(values) {
            *s = s.wrapping_add(*v);
        }
    }
    let shares_of = |owner: &str, secret: Secret| -> Result<[u8; 32]> {
        let shares = reveals
            .iter()
            .filter(|r| r.owner == owner && r.secret == secret)
            .map(|r| Share::from_bytes(&r.share))
            .collect::<Result<Vec<_>>>()?;
        reconstruct(&shares, t)
    };
    let survivors: BTreeSet<&str> = masked.iter().map(|(c, _)| c.as_str()).collect();
    for survivor in &survivors {
        add_mask(&mut sum, shares_of(survivor, Secret::SelfSeed)?, false);
    }
    for (d, (dropped, _)) in peers.iter().enumerate() {
        if survivors.contains(dropped.as_str()) {
            continue;
        }
        let secret = StaticSecret::from(shares_of(dropped, Secret::SecretKey)?);
        for (s, (survivor, public)) in peers.iter().enumerate() {
            if !survivors.contains(survivor.as_str()) {
                continue;
            }
            // The survivor added +PRG when the dropout came after it.
            add_mask(&mut sum, pairwise_seed(&secret, public), d < s);
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shamir_needs_t_shares() {
        let secret = random_bytes();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let shares = split(&secret, 5, 3, &mut rng);
        assert_eq!(reconstruct(&shares[1..4], 3).unwrap(), secret);
        assert_eq!(
            reconstruct(&[shares[4], shares[0], shares[2]], 3).unwrap(),
            secret
        );
        assert!(reconstruct(&shares[..2], 3).is_err());
        // Two shares of a degree-2 polynomial interpolate to something else.
        assert_ne!(reconstruct(&shares[..2], 2).ok(), Some(secret));
    }

    #[test]
    fn quantization_round_trips_within_a_step() {
        let values = [0.5f32, -1.25, 7.9, -8.0, 0.0];
        let sum: Vec<u32> = quantize(&values, 1.0)
            .iter()
            .zip(quantize(&values, 1.0))
            .map(|(a, b)| a + b)
            .collect();
        let back = dequantize(&sum, 2);
        let step = 2.0 * CLIPPING_RANGE / QUANTIZATION_RANGE as f32;
        for (v, b) in values.iter().zip(back) {
            assert!((2.0 * v - b).abs() <= 2.0 * step, "{v} -> {b}");
        }
        // Clipped, not wrapped.
        assert_eq!(
            dequantize(&quantize(&[100.0], 1.0), 1),
            vec![CLIPPING_RANGE]
        );
    }

    /// Runs stages 1–4 for `clients`, of which `dropouts` send no masked
    /// input; returns the unmasked sum and what the coordinator saw.
    fn run(clients: &[(&str, Vec<f32>, f64)], dropouts: &[&str]) -> (Vec<f32>, Vec<Vec<u32>>) {
        let mut parties: Vec<SecAggClient> = clients
            .iter()
            .map(|(n, _, _)| SecAggClient::new(n))
            .collect();
        let peers: Vec<(String, [u8; 32])> = parties
            .iter()
            .map(|p| (p.name.clone(), p.public_key()))
            .collect();
        let mut mail: Vec<(String, String, Vec<u8>)> = Vec::new();
        for p in parties.iter_mut() {
            for (to, sealed) in p.shares_for(&peers).unwrap() {
                mail.push((p.name.clone(), to, sealed));
            }
        }
        for (from, to, sealed) in mail {
            let public = peers.iter().find(|(n, _)| *n == from).unwrap().1;
            let p = parties.iter_mut().find(|p| p.name == to).unwrap();
            p.receive(&from, &public, &sealed).unwrap();
        }
        let mut masked = Vec::new();
        for (p, (_, values, scale)) in parties.iter().zip(clients) {
            if !dropouts.contains(&p.name.as_str()) {
                masked.push((p.name.clone(), p.mask(&peers, values, *scale)));
            }
        }
        let survivors: Vec<String> = masked.iter().map(|(n, _)| n.clone()).collect();
        let dropped: Vec<String> = dropouts.iter().map(|d| d.to_string()).collect();
        let reveals: Vec<Reveal> = parties
            .iter()
            .filter(|p| survivors.contains(&p.name))
            .flat_map(|p| p.reveal(&survivors, &dropped).unwrap())
            .collect();
        let sum = unmask(&peers, &masked, &reveals, threshold(peers.len())).unwrap();
        (
            dequantize(&sum, survivors.len()),
            masked.into_iter().map(|(_, m)| m).collect(),
        )
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn the_coordinator_gets_the_weighted_sum_only() {
        let clients = [
            ("a", vec![0.5, -1.0, 2.0], 0.5),
            ("b", vec![1.5, 1.0, -2.0], 0.25),
            ("c", vec![-0.5, 0.0, 4.0], 0.25),
        ];
        let (sum, seen) = run(&clients, &[]);
        close(
            &sum,
            &[
                0.5 * 0.5 + 1.5 * 0.25 - 0.5 * 0.25,
                -0.5 + 0.25,
                1.0 - 0.5 + 1.0,
            ],
        );
        // What arrived from each client is not its quantized input.
        for ((_, values, scale), masked) in clients.iter().zip(&seen) {
            assert_ne!(&quantize(values, *scale), masked);
        }
    }

    #[test]
    fn a_dropout_after_sharing_is_unmasked_away() {
        let clients = [
            ("a", vec![1.0, 2.0], 1.0),
            ("b", vec![3.0, -4.0], 1.0),
            ("c", vec![5.0, 6.0], 1.0),
            ("d", vec![-7.0, 0.5], 1.0),
        ];
        let (sum, _) = run(&clients, &["c"]);
        close(&sum, &[1.0 + 3.0 - 7.0, 2.0 - 4.0 + 0.5]);
    }

    #[test]
    fn a_client_never_reveals_both_secrets_of_one_peer() {
        let c = SecAggClient::new("a");
        assert!(c.reveal(&["b".into()], &["b".into()]).is_err());
    }

    #[test]
    fn tampered_shares_are_refused() {
        let mut a = SecAggClient::new("a");
        let mut b = SecAggClient::new("b");
        let peers = vec![
            ("a".to_string(), a.public_key()),
            ("b".to_string(), b.public_key()),
        ];
        let mut sealed = a.shares_for(&peers).unwrap().remove(0).1;
        b.shares_for(&peers).unwrap();
        sealed[0] ^= 1;
        assert!(b.receive("a", &peers[0].1, &sealed).is_err());
    }
}
