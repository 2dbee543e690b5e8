//! Benchmarks of the vault: unlock time (dominated by Argon2id at the production default,
//! 64 MiB, t=3, p=1) and key derivation (SLIP-0010, HMAC-SHA512 per path step).
//!
//! Run with `cargo bench -p alknet-vault --bench vault`. The unlock figure is what
//! `alknet serve` adds to start-up; a few hundred milliseconds is the intended cost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use alknet_vault::{KdfParams, Mnemonic, Passphrase, UnlockedVault};
use criterion::{Criterion, criterion_group, criterion_main};

fn vault_in(dir: &std::path::Path, kdf: KdfParams) -> (Passphrase, UnlockedVault) {
    let words = Mnemonic::generate(24).unwrap();
    let pass = Passphrase::new("bench passphrase".into()).unwrap();
    let v = alknet_vault::create(dir, words.to_seed(None).unwrap(), &pass, kdf).unwrap();
    (pass, v)
}

fn unlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("unlock");
    g.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let (pass, _) = vault_in(dir.path(), KdfParams::DEFAULT);
    g.bench_function("argon2id_64MiB_t3_p1", |b| {
        b.iter(|| alknet_vault::unlock(black_box(dir.path()), &pass).unwrap())
    });
    g.finish();
}

fn derive(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (_, v) = vault_in(dir.path(), KdfParams::insecure_for_tests());
    let mut g = c.benchmark_group("derive");
    g.bench_function("node_identity_seed", |b| b.iter(|| v.node_identity_seed()));
    g.bench_function("storage_key", |b| b.iter(|| v.storage_key(black_box(7))));
    g.bench_function("fingerprint_of_seed", |b| {
        let s = v.node_identity_seed();
        b.iter(|| alknet_vault::fingerprint_of_seed(black_box(&s)))
    });
    g.bench_function("bip39_words_to_seed", |b| {
        let words = Mnemonic::generate(24).unwrap();
        b.iter(|| words.to_seed(None).unwrap())
    });
    g.finish();
}

fn blob(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (_, v) = vault_in(dir.path(), KdfParams::insecure_for_tests());
    let sealed = v.seal_blob(1, b"record", &[0u8; 256]).unwrap();
    let mut g = c.benchmark_group("blob");
    g.bench_function("seal_256B", |b| {
        b.iter(|| v.seal_blob(1, b"record", black_box(&[0u8; 256])).unwrap())
    });
    g.bench_function("open_256B", |b| {
        b.iter(|| v.open_blob(b"record", black_box(&sealed)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, unlock, derive, blob);
criterion_main!(benches);
