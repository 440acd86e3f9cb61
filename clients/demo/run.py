"""``keyserver demo`` / ``make demo``: the confidential-inference design end to end, in one command.

Starts a keyserver (embedded default) and a software TPM, sets up a tenant (AK enrolment, CI signer,
a CI-signed reference-value bundle, an activated policy, the model owner's imported key), boots the
measured loader (which gets its key only after attestation and a verified receipt), starts the untrusted
inference server, sends an encrypted prompt and prints the decrypted completion; shows that an
unsigned program is refused; runs ``keyserver audit verify``; then boots a *changed* loader and shows
the keyserver's denial, and audits again. Exit status 0 when every step behaved as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from clients.caller import InferenceFailed, attested_loader, complete
from clients.demo.deployment import ISSUER, PCR, TENANT, Deployment, deployment
from clients.demo.processes import DemoError

PROMPT = "the keyserver "


def say(step: str, detail: str = "") -> None:
    print(f"==> {step}" + (f"\n    {detail}" if detail else ""), flush=True)


async def ask(deployed: Deployment, prompt: str, program: dict[str, Any]) -> dict[str, Any]:
    async with deployed.client() as keyserver, deployed.caller_http() as inference:
        loader = await attested_loader(
            inference,
            keyserver,
            tenant=TENANT,
            issuer=ISSUER,
            expected_claims={f"tpm.pcrs.sha256.{PCR}": {deployed.expected_pcr}},
        )
        inputs = {"prompt": prompt, "max_new_tokens": 120, "temperature_milli": 600, "seed": 1}
        return await complete(inference, loader, program, inputs)


async def story(deployed: Deployment) -> int:
    failures = 0
    say("keyserver running", deployed.keyserver_url)
    await deployed.set_up_tenant()
    say(
        "tenant 'demo' set up",
        f"AK enrolled by credential activation; CI signer 'ci' registered; loader measures to PCR {PCR} = "
        f"{deployed.expected_pcr[:16]}… (CI-signed bundle); policy activated; key 'weights' imported",
    )
    loader = deployed.boot_loader("loader", deployed.loader_config())
    if not loader.ready:
        raise DemoError(f"the reviewed loader did not get its key: {loader.status}")
    say("loader booted and measured", f"key released and receipt verified: {loader.status}")
    deployed.start_inference(loader.url)
    say("inference server (untrusted) running", deployed.inference_url)

    outputs = await ask(deployed, PROMPT, deployed.signed_program)
    say("encrypted prompt → completion", f"{PROMPT!r} → {PROMPT + str(outputs['completion'])!r}")

    unsigned = dict(deployed.signed_program)
    unsigned["signature"] = deployed.signed_program["signature"][:-8] + "AAAAAAA="
    try:
        await ask(deployed, PROMPT, unsigned)
        say("FAILED: a program with a forged signature ran")
        failures += 1
    except InferenceFailed as refused:
        say("a program with a forged signature is refused", refused.reason)

    report = deployed.audit()
    say("keyserver audit verify", f"verified {report.get('verified')}: {report.get('tree_size')} entries")

    attacker = ed25519.Ed25519PrivateKey.generate()
    changed = deployed.boot_loader("changed-loader", deployed.loader_config(attacker=attacker.public_key()))
    if changed.ready:
        say("FAILED: a changed loader got the key")
        failures += 1
    else:
        say(
            "a changed loader (it also trusts another program signer) is denied",
            f"{changed.status.get('reason')}: {changed.status.get('detail')}",
        )
    report = deployed.audit()
    say("keyserver audit verify (the denial is logged too)", f"releases: {report.get('decisions_by_key')}")

    from clients.demo.gpu_story import gpu_chapter

    gpu = await gpu_chapter(deployed)
    say(
        "gpu.composite_release_granted"
        if gpu["composite_release_granted"]
        else "FAILED: gpu.composite_release",
        "TPM quote + 2 simulated CC GPUs' SPDM reports, one challenge and ephemeral key: key released",
    )
    say(
        "gpu.wrong_firmware_denied" if gpu["wrong_firmware_denied"] else "FAILED: gpu.wrong_firmware",
        deployed.gpu_denial,
    )
    failures += sum(not ok for ok in gpu.values())
    say("done" if failures == 0 else f"{failures} step(s) did not behave")
    return 0 if failures == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyserver demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="keyserver-demo-"))
    try:
        with deployment(workdir, keep=args.workdir is not None) as deployed:
            return asyncio.run(story(deployed))
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
