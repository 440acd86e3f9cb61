"""``keyserver demo`` / ``make demo``: the confidential-inference design end to end, in one command.

Starts a keyserver (embedded default) and a software TPM, sets up a tenant (AK enrolment, CI signer,
a CI-signed reference-value bundle, an activated policy, the model owner's imported key), boots the
measured loader (which gets its key only after attestation and a verified receipt), starts the untrusted
inference server, sends an encrypted prompt and prints the decrypted completion; shows that an
unsigned program is refused; runs ``keyserver audit verify``; then boots a *changed* loader and shows
the keyserver's denial, and audits again. Exit status 0 when every step behaved as it should.

``--json`` prints one JSON document of the demo's outcomes on standard output, each
``"area.outcome": {"expected": …, "observed": …, "ok": bool}`` (the narration goes to standard error).
Outcome names are stable: issues and checks from outside refer to them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from clients.caller import InferenceFailed, attested_loader, complete
from clients.demo.deployment import ISSUER, PCR, TENANT, Deployment, deployment
from clients.demo.processes import DemoError

PROMPT = "the keyserver "


_narration = sys.stdout


def say(step: str, detail: str = "") -> None:
    print(f"==> {step}" + (f"\n    {detail}" if detail else ""), file=_narration, flush=True)


class Outcomes:
    """What each step was expected to do and what it did; ``ok`` when they are equal."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    def record(self, name: str, expected: Any, observed: Any) -> bool:
        ok = bool(expected == observed)
        self.results[name] = {"expected": expected, "observed": observed, "ok": ok}
        return ok

    @property
    def failures(self) -> int:
        return sum(not r["ok"] for r in self.results.values())


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


async def story(deployed: Deployment, outcomes: Outcomes) -> None:
    say("keyserver running", deployed.keyserver_url)
    await deployed.set_up_tenant()
    say(
        "tenant 'demo' set up",
        f"AK enrolled by credential activation; CI signer 'ci' registered; loader measures to PCR {PCR} = "
        f"{deployed.expected_pcr[:16]}… (CI-signed bundle); policy activated; key 'weights' imported",
    )
    loader = deployed.boot_loader("loader", deployed.loader_config())
    outcomes.record("release.reviewed_loader_booted", True, loader.ready)
    if not loader.ready:
        raise DemoError(f"the reviewed loader did not get its key: {loader.status}")
    say("loader booted and measured", f"key released and receipt verified: {loader.status}")
    deployed.start_inference(loader.url)
    say("inference server (untrusted) running", deployed.inference_url)

    outputs = await ask(deployed, PROMPT, deployed.signed_program)
    completion = outputs.get("completion")
    outcomes.record(
        "inference.encrypted_prompt_answered", True, isinstance(completion, str) and bool(completion)
    )
    say("encrypted prompt → completion", f"{PROMPT!r} → {PROMPT + str(completion)!r}")

    unsigned = dict(deployed.signed_program)
    unsigned["signature"] = deployed.signed_program["signature"][:-8] + "AAAAAAA="
    try:
        await ask(deployed, PROMPT, unsigned)
        outcomes.record("programs.forged_signature_refused", "refused", "ran")
        say("FAILED: a program with a forged signature ran")
    except InferenceFailed as refused:
        outcomes.record("programs.forged_signature_refused", "refused", "refused")
        say("a program with a forged signature is refused", refused.reason)

    report = deployed.audit()
    outcomes.record("audit.log_verified", True, report.get("verified"))
    say("keyserver audit verify", f"verified {report.get('verified')}: {report.get('tree_size')} entries")

    attacker = ed25519.Ed25519PrivateKey.generate()
    changed = deployed.boot_loader("changed-loader", deployed.loader_config(attacker=attacker.public_key()))
    outcomes.record("release.changed_loader_denied", "denied", "granted" if changed.ready else "denied")
    if changed.ready:
        say("FAILED: a changed loader got the key")
    else:
        say(
            "a changed loader (it also trusts another program signer) is denied",
            f"{changed.status.get('reason')}: {changed.status.get('detail')}",
        )
    report = deployed.audit()
    outcomes.record("audit.denial_logged", True, bool(report.get("verified")))
    say("keyserver audit verify (the denial is logged too)", f"releases: {report.get('decisions_by_key')}")

    from clients.demo.gpu_story import gpu_chapter

    gpu = await gpu_chapter(deployed)
    outcomes.record("gpu.composite_release_granted", True, gpu["composite_release_granted"])
    say(
        "gpu.composite_release_granted"
        if gpu["composite_release_granted"]
        else "FAILED: gpu.composite_release",
        "TPM quote + 2 simulated CC GPUs' SPDM reports, one challenge and ephemeral key: key released",
    )
    outcomes.record("gpu.wrong_firmware_denied", True, gpu["wrong_firmware_denied"])
    say(
        "gpu.wrong_firmware_denied" if gpu["wrong_firmware_denied"] else "FAILED: gpu.wrong_firmware",
        deployed.gpu_denial,
    )
    from clients.demo.witness_story import witness_chapter

    witnessed = await witness_chapter(deployed)
    outcomes.record("witness.cosigned_release", True, witnessed["cosigned_release"])
    say("witness.cosigned_release", f"3 witness processes; receipt cosigned by {witnessed['cosigners']}")
    split = witnessed["split_view"]
    outcomes.record(
        "witness.split_view_refused",
        {"witnesses_cosigned": 0, "loader": "refused"},
        {"witnesses_cosigned": split["witnesses_cosigned"], "loader": split["loader"]},
    )
    say("witness.split_view_refused", f"a forked checkpoint signed by the log key: {split['why']}")
    from clients.demo.threshold_story import threshold_chapter

    quorum = await threshold_chapter(deployed)
    outcomes.record("threshold.boots_2_of_3", True, quorum["boots_2_of_3"])
    say(
        "threshold.boots_2_of_3",
        f"3 keyservers, 3 operators; the loader combined 2 shares: {quorum['first']}",
    )
    outcomes.record("threshold.caller_needs_2_of_3", {"one": "refused", "two": "accepted"}, quorum["caller"])
    say(
        "threshold.caller_needs_2_of_3",
        f"a caller configured 2 of 3 with one, then two results: {quorum['caller']}",
    )
    outcomes.record(
        "threshold.one_veto_still_boots",
        {"booted": True, "refused_by": ["ks-b"], "refusal_logged": True},
        quorum["one_veto"],
    )
    say(
        "threshold.one_veto_still_boots",
        f"operator B revoked the loader's reference value: {quorum['one_veto']}",
    )
    outcomes.record(
        "threshold.two_vetoes_refused",
        {"booted": False, "reason": "threshold-quorum-refused", "names_refusals": True},
        quorum["two_vetoes"],
    )
    say("threshold.two_vetoes_refused", quorum["two_vetoes_detail"])
    from clients.demo.safeguards_story import safeguards_chapter

    guarded = await safeguards_chapter(deployed)
    outcomes.record(
        "safeguards.policy_denies_unsafe_loader",
        {
            "safe": "granted",
            "no-classifier": "rule-false: requires-the-safety-classifier",
            "bigger-budget": "rule-false: egress-at-most-300-tokens-an-hour",
        },
        guarded["policy"],
    )
    say("safeguards.policy_denies_unsafe_loader", f"{guarded['policy']}: {guarded['policy_detail']}")
    outcomes.record(
        "safeguards.config_replay_mismatch_refused", "loader-config-mismatch", guarded["replay_mismatch"]
    )
    say(
        "safeguards.config_replay_mismatch_refused", "a boot event log that does not replay to the quoted PCR"
    )
    outcomes.record("safeguards.allowed_prompt_answered", "answered", guarded.get("allowed"))
    say(
        "safeguards.allowed_prompt_answered",
        "the classifier signed it; the loader checked the signature and ran it",
    )
    outcomes.record(
        "safeguards.flagged_prompt_refused",
        {"classifier": "flagged", "loader": "classifier-signature-missing"},
        guarded.get("flagged"),
    )
    say("safeguards.flagged_prompt_refused", f"{guarded.get('flagged')}")
    outcomes.record(
        "safeguards.forged_signature_refused",
        {
            "forged": "classifier-signature-invalid",
            "replayed": "classifier-signature-replayed",
            "expired": "classifier-signature-expired",
        },
        guarded.get("forged"),
    )
    say("safeguards.forged_signature_refused", f"{guarded.get('forged')}")
    egress = guarded.get("egress", {})
    over_budget = "egress-budget-exceeded" in egress.get("outcomes", [])
    counted = egress.get("counters", {}).get("refusals", {}).get("egress-budget-exceeded", 0) >= 1
    outcomes.record(
        "safeguards.egress_budget_refused",
        {"refused": True, "counted": True},
        {"refused": over_budget, "counted": counted},
    )
    say(
        "safeguards.egress_budget_refused",
        f"{egress.get('outcomes')}; counters {egress.get('counters', {}).get('egress')}",
    )
    say("done" if outcomes.failures == 0 else f"{outcomes.failures} step(s) did not behave")


def main(argv: list[str] | None = None) -> int:
    global _narration
    parser = argparse.ArgumentParser(prog="keyserver demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the outcomes as one JSON document")
    args = parser.parse_args(argv)
    if args.json:
        _narration = sys.stderr
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="keyserver-demo-"))
    outcomes = Outcomes()
    status = 0
    try:
        with deployment(workdir, keep=args.workdir is not None) as deployed:
            asyncio.run(story(deployed, outcomes))
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        outcomes.record("demo.completed", True, False)
        status = 1
    if args.json:
        print(json.dumps(outcomes.results, indent=2, sort_keys=True))
    return 1 if status or outcomes.failures else 0


if __name__ == "__main__":
    sys.exit(main())
