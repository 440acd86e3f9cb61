// Run in the explorer's page by tests/test_explorer_browser.py: every good proof must verify with
// merkle.js, every mutated one must be refused. Returns {accepted, refused, errors}.
async (cases) => {
  const m = await import("/explorer/static/merkle.js");
  const bytes = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
  const flip = (b) => { const c = b.slice(); c[c.length - 1] ^= 1; return c; };
  const out = { accepted: 0, refused: 0, errors: [] };
  const passes = async (what, f) => { try { await f(); out.accepted++; } catch (e) { out.errors.push(`${what}: ${e.message}`); } };
  const fails = async (what, f) => { try { await f(); out.errors.push(`${what}: accepted`); } catch (e) { out.refused++; } };
  for (const [index, size, proofHex, rootHex] of cases.inclusion) {
    const leaf = await m.leafHash(new TextEncoder().encode(`entry ${index}`));
    const proof = proofHex.map(bytes);
    const root = bytes(rootHex);
    await passes(`inclusion ${index}/${size}`, () => m.verifyInclusion(leaf, index, size, proof, root));
    await fails(`inclusion ${index}/${size} other leaf`, () => m.verifyInclusion(flip(leaf), index, size, proof, root));
    await fails(`inclusion ${index}/${size} other root`, () => m.verifyInclusion(leaf, index, size, proof, flip(root)));
    await fails(`inclusion ${index}/${size} longer`, () => m.verifyInclusion(leaf, index, size, [...proof, root], root));
    await fails(`inclusion ${index}/${size} next index`, () => m.verifyInclusion(leaf, index + 1, size, proof, root));
    if (proof.length) {
      await fails(`inclusion ${index}/${size} shorter`, () => m.verifyInclusion(leaf, index, size, proof.slice(1), root));
      await fails(`inclusion ${index}/${size} flipped`, () => m.verifyInclusion(leaf, index, size, [flip(proof[0]), ...proof.slice(1)], root));
    }
  }
  for (const [first, second, proofHex, aHex, bHex] of cases.consistency) {
    const proof = proofHex.map(bytes);
    const a = bytes(aHex);
    const b = bytes(bHex);
    await passes(`consistency ${first}->${second}`, () => m.verifyConsistency(first, second, a, b, proof));
    if (first > 0 && first < second) {
      await fails(`consistency ${first}->${second} old root`, () => m.verifyConsistency(first, second, flip(a), b, proof));
      await fails(`consistency ${first}->${second} new root`, () => m.verifyConsistency(first, second, a, flip(b), proof));
      await fails(`consistency ${first}->${second} flipped`, () => m.verifyConsistency(first, second, a, b, [flip(proof[0]), ...proof.slice(1)]));
      await fails(`consistency ${first}->${second} shorter`, () => m.verifyConsistency(first, second, a, b, proof.slice(0, -1)));
    }
  }
  return out;
}
