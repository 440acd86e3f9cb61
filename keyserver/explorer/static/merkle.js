// RFC 9162 Merkle tree proofs, verified with WebCrypto's SHA-256 (the browser's own, no library).
// Sizes and indices are JS numbers: exact to 2^53, far past any tenant's log. Bit tests use % and
// division, never the 32-bit bitwise operators.
"use strict";

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

export function leafHash(entry) {
  return sha256(concat(Uint8Array.of(0), entry));
}

function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

const odd = (n) => n % 2 === 1;
const half = (n) => Math.floor(n / 2);

function checkHashes(hashes) {
  for (const h of hashes) if (!(h instanceof Uint8Array) || h.length !== 32) throw new Error("a proof hash is not 32 bytes");
}

// RFC 9162 §2.1.3.2. Resolves to nothing, or throws with the reason.
export async function verifyInclusion(leaf, index, size, path, root) {
  checkHashes([leaf, root, ...path]);
  if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size) && index >= 0 && index < size)) {
    throw new Error(`index ${index} is not inside a tree of ${size} entries`);
  }
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) throw new Error("the inclusion proof is too long");
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new Error("the inclusion proof is too short");
  if (!equalBytes(r, root)) throw new Error(`entry ${index} does not lead to the checkpoint's root`);
}

// RFC 9162 §2.1.4.2, with the cases it leaves out made strict (as audit/merkle.py): equal sizes need
// equal roots and an empty proof; the empty tree needs the empty-tree root and an empty proof.
export async function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
  checkHashes([firstRoot, secondRoot, ...proof]);
  if (!(Number.isSafeInteger(first) && Number.isSafeInteger(second) && first >= 0 && first <= second)) {
    throw new Error(`a tree of ${first} entries cannot precede one of ${second}`);
  }
  if (first === second) {
    if (proof.length || !equalBytes(firstRoot, secondRoot)) throw new Error(`two different roots for tree size ${first}`);
    return;
  }
  if (first === 0) {
    if (proof.length || !equalBytes(firstRoot, await sha256(new Uint8Array(0)))) throw new Error("bad proof from the empty tree");
    return;
  }
  if (!proof.length) throw new Error("the consistency proof is empty");
  let path = proof;
  if (Number.isInteger(Math.log2(first))) path = [firstRoot, ...proof];
  let fn = first - 1;
  let sn = second - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) throw new Error("the consistency proof is too long");
    if (odd(fn) || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (!odd(fn)) {
        while (!odd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new Error("the consistency proof is too short");
  if (!equalBytes(fr, firstRoot)) throw new Error(`the proof does not lead to the root of size ${first}`);
  if (!equalBytes(sr, secondRoot)) throw new Error(`the proof does not lead to the root of size ${second}`);
}
