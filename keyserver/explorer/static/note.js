// C2SP signed notes and tlog checkpoints (audit/checkpoint.py has the reference): parse, and verify
// the log's own Ed25519 signature with WebCrypto. Other signature lines are cosignatures (witnesses):
// listed with their key names; verified only when the page is given their keys.
"use strict";

import { sha256, equalBytes } from "./merkle.js";

const DASH = "\u2014 ";

export function b64decode(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new Error("not hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function parseCheckpoint(text) {
  const split = text.indexOf("\n\n");
  if (split < 0) throw new Error("the checkpoint has no signature block");
  const body = text.slice(0, split + 1);
  const lines = body.slice(0, -1).split("\n");
  if (lines.length < 3) throw new Error("the checkpoint body has fewer than three lines");
  const [origin, sizeText, rootText] = lines;
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeText)) throw new Error(`tree size ${JSON.stringify(sizeText)} is not a number`);
  const size = Number(sizeText);
  const root = b64decode(rootText);
  if (root.length !== 32) throw new Error("the root hash is not 32 bytes");
  const signatures = text
    .slice(split + 2)
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      if (!line.startsWith(DASH)) throw new Error("a signature line does not start with an em dash");
      const [name, value] = line.slice(DASH.length).split(" ");
      const raw = b64decode(value);
      if (raw.length < 5) throw new Error("a signature is too short");
      return { name, keyId: raw.slice(0, 4), signature: raw.slice(4) };
    });
  return { text, body, origin, size, root, extensions: lines.slice(3), signatures };
}

// vkey: <name>+<8 hex key id>+<base64(0x01 || 32-byte Ed25519 key)>
export async function parseVerifierKey(vkey) {
  const text = vkey.trim();
  const first = text.indexOf("+");
  const second = text.indexOf("+", first + 1);
  if (first < 1 || second < 0) throw new Error("a verifier key reads name+keyid+key");
  const [name, idText, keyText] = [text.slice(0, first), text.slice(first + 1, second), text.slice(second + 1)];
  const raw = b64decode(keyText);
  if (raw.length !== 33 || raw[0] !== 1) throw new Error("the verifier key is not an Ed25519 key");
  const publicKey = raw.slice(1);
  const keyId = await computeKeyId(name, publicKey);
  if (hex(keyId) !== idText) throw new Error("the verifier key's id does not match its name and key");
  return { name, keyId, publicKey };
}

async function computeKeyId(name, publicKey) {
  const encoded = new TextEncoder().encode(name);
  const material = new Uint8Array(encoded.length + 2 + publicKey.length);
  material.set(encoded, 0);
  material.set([0x0a, 0x01], encoded.length);
  material.set(publicKey, encoded.length + 2);
  return (await sha256(material)).slice(0, 4);
}

// Resolves to the checkpoint if the log's key signed it (every line from that key must verify), else throws.
export async function verifyCheckpoint(text, verifier) {
  const checkpoint = parseCheckpoint(text);
  if (checkpoint.origin !== verifier.name) throw new Error(`the checkpoint is for ${checkpoint.origin}, not ${verifier.name}`);
  const key = await crypto.subtle.importKey("raw", verifier.publicKey, { name: "Ed25519" }, false, ["verify"]);
  const message = new TextEncoder().encode(checkpoint.body);
  let verified = 0;
  checkpoint.cosignatures = [];
  for (const line of checkpoint.signatures) {
    if (line.name === verifier.name && equalBytes(line.keyId, verifier.keyId)) {
      if (!(await crypto.subtle.verify({ name: "Ed25519" }, key, line.signature, message))) {
        throw new Error("the log's signature on the checkpoint does not verify");
      }
      verified++;
    } else {
      checkpoint.cosignatures.push({ name: line.name, keyId: hex(line.keyId) });
    }
  }
  if (!verified) throw new Error("the checkpoint carries no signature from the log's key");
  return checkpoint;
}
