"""The remote CLI's command tree (argparse), and shell completion generated from it."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.cli.durations import parse_seconds

GLOBAL_HELP = "drive a remote keyserver as a tenant admin, CI signer or auditor (docs/cli.md)"


def _json(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # SUPPRESS: a --json after the command must not reset the global one given before it.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON document")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyserver", description=GLOBAL_HELP)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="the keyserver's base URL, e.g. https://keys.example")
    target.add_argument("--profile", help="a [profiles.NAME] table in ~/.config/keyserver/profiles.toml")
    parser.add_argument("--tenant", help="the tenant (default: the profile's, else the token's own)")
    parser.add_argument("--token-file", type=Path, help="read the token from this file (mode 600)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--json", action="store_true", default=False, help="print one JSON document")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _json(commands.add_parser("whoami", help="the token's id, role and tenant"))
    _keys(commands)
    _policies(commands)
    _refs(commands)
    _signers(commands)
    _tpm(commands)
    _limits(commands)
    _witnesses(commands)
    _log(commands)
    _tokens(commands)
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh"])
    return parser


def _keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = commands.add_parser("key", help="keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = _json(key.add_parser("create", help="create a key under a policy (generated in the backend)"))
    create.add_argument("name")
    create.add_argument("--policy", required=True)
    imported = _json(key.add_parser("import", help="create a key from existing material"))
    imported.add_argument("name")
    imported.add_argument("--policy", required=True)
    imported.add_argument("--material", type=Path, required=True, help="file with the raw key bytes")
    _json(key.add_parser("list", help="the tenant's keys"))
    for action, what in (
        ("rotate", "add a version"),
        ("disable", "refuse releases"),
        ("enable", "allow again"),
    ):
        _json(key.add_parser(action, help=what)).add_argument("name")


def _policies(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="release policies").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = _json(policy.add_parser("add", help="add a version from a JSON file (activate it separately)"))
    add.add_argument("name")
    add.add_argument("file", type=Path)
    add.add_argument("--activate", action="store_true", help="activate the new version (runs its examples)")
    activate = _json(policy.add_parser("activate", help="activate a version (runs its examples)"))
    activate.add_argument("name")
    activate.add_argument("version", type=int)
    _json(policy.add_parser("list", help="every version, the active ones marked"))
    dry = _json(policy.add_parser("dry-run", help="what the policy decides, rule by rule"))
    dry.add_argument("name")
    given = dry.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--evidence", type=Path, help="raw evidence as recorded: {evidence, nonce, ephemeral_key} (JSON)"
    )
    given.add_argument("--claims", type=Path, help="claims (JSON), skipping evidence verification")
    dry.add_argument("--version", type=int, help="a version other than the active one")


def _refs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    refs = commands.add_parser("refs", help="reference values").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    publish = _json(refs.add_parser("publish", help="sign (or take a signature for) a bundle and publish it"))
    publish.add_argument("bundle", type=Path, help="JSON: {name, tee, values} (tenant and v are filled in)")
    publish.add_argument("--signer", required=True, help="the registered CI signer's name")
    how = publish.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--signing-key", type=Path, help="the signer's private key (PEM, unencrypted or --key-pass-env)"
    )
    how.add_argument("--signature", type=Path, help="a signature made elsewhere (raw bytes or base64)")
    publish.add_argument("--key-pass-env", help="environment variable holding the private key's passphrase")
    _json(refs.add_parser("list", help="every version of every set"))
    revoke = _json(refs.add_parser("revoke", help="revoke a version"))
    revoke.add_argument("name")
    revoke.add_argument("version", type=int)


def _signers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    signer = commands.add_parser("signer", help="CI signers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    register = _json(signer.add_parser("register", help="register a CI signer's public key"))
    register.add_argument("name")
    register.add_argument("public_key", type=Path, help="PEM SubjectPublicKeyInfo (Ed25519, P-256, P-384)")
    _json(signer.add_parser("list", help="the tenant's CI signers"))
    _json(signer.add_parser("revoke", help="revoke a signer")).add_argument("name")


def _tpm(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tpm = commands.add_parser("tpm", help="TPM trust").add_subparsers(
        dest="area", required=True, metavar="AREA"
    )
    anchor = tpm.add_parser("anchor", help="trusted CAs for EK or AK certificates").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = _json(anchor.add_parser("add", help="trust a CA certificate (PEM or DER)"))
    add.add_argument("name")
    add.add_argument("certificate", type=Path)
    add.add_argument("--kind", choices=["ek-ca", "ak-ca"], default="ek-ca")
    _json(anchor.add_parser("list", help="the tenant's anchors"))
    _json(anchor.add_parser("remove", help="stop trusting an anchor")).add_argument("anchor_id")
    ek = tpm.add_parser("ek", help="pinned endorsement keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    pin = _json(
        ek.add_parser("pin", help="vouch for one EK (TPM2B_PUBLIC or SubjectPublicKeyInfo; DER or PEM)")
    )
    pin.add_argument("ek_public", type=Path)
    pin.add_argument("--description", default="")
    _json(ek.add_parser("list", help="the tenant's pinned EKs"))
    _json(
        ek.add_parser("unpin", help="stop vouching for an EK (its AKs stay until revoked: tpm ak revoke)")
    ).add_argument("sha256", help="the EK's SHA-256, as pin and list show it")
    ak = tpm.add_parser("ak", help="enrolled attestation keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    _json(ak.add_parser("list", help="the tenant's enrolled AKs"))
    _json(ak.add_parser("revoke", help="revoke an AK")).add_argument("ak_name")


def _limits(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limits = commands.add_parser("limits", help="release limits").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    _json(limits.add_parser("show", help="the limits in force"))
    for action, what in (("set", "limit releases per window"), ("reset", "back to the keyserver's default")):
        command = _json(limits.add_parser(action, help=what))
        scope = command.add_mutually_exclusive_group(required=True)
        scope.add_argument("--key", help="a key's granted releases")
        scope.add_argument("--tenant-wide", action="store_true", help="the tenant's release attempts")
        if action == "set":
            budget = command.add_mutually_exclusive_group(required=True)
            budget.add_argument("--max", type=int, dest="max_releases", help="releases per window")
            budget.add_argument("--unlimited", action="store_true", help="no limit for this scope")
            command.add_argument("--window", type=parse_seconds, required=True, help="e.g. 60s, 15m, 1h, 1d")


def _witnesses(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    witnesses = commands.add_parser("witnesses", help="the witnesses that cosign the log").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    _json(witnesses.add_parser("show", help="the witnesses, quorum and failure mode"))
    command = _json(witnesses.add_parser("set", help="ask these witnesses; require a quorum"))
    command.add_argument(
        "--witness",
        nargs=3,
        action="append",
        required=True,
        metavar=("NAME", "URL", "VKEY"),
        help="a witness: its name, submission URL and cosignature/v1 vkey (repeat for each)",
    )
    command.add_argument("--quorum", type=int, required=True, help="cosignatures a release needs (m)")
    command.add_argument(
        "--failure-mode",
        choices=["refuse", "release-weak"],
        default="refuse",
        help="fewer than m in time: refuse (503, no key; the default) or release with a weak receipt",
    )
    _json(witnesses.add_parser("remove", help="stop witnessing the log"))


def _log(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    log = commands.add_parser("log", help="the release log").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    show = _json(log.add_parser("show", help="entries, filtered (newest last)"))
    tail = _json(log.add_parser("tail", help="the newest entries; --follow for new ones as they come"))
    for command in (show, tail):
        command.add_argument("--key", help="only releases of this key")
        command.add_argument("--decision", choices=["granted", "denied"])
        command.add_argument("--reason", help="only denials with this reason")
        command.add_argument("--kind", help="only entries of this kind (key-release, tpm-ak-enrolled, …)")
    show.add_argument("--since", help="ISO 8601 time (entries at or after)")
    show.add_argument("--until", help="ISO 8601 time (entries before)")
    show.add_argument("--limit", type=int, default=0, help="at most the last N matches (default: all)")
    tail.add_argument("-n", "--lines", type=int, default=10, help="entries to show first (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    tail.add_argument("--interval", type=parse_seconds, default=2, help="poll interval (default 2s)")
    tail.add_argument("--verifier-key", help="the log's vkey, pinned out of band (default: fetched once)")


def _tokens(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="the tenant's API tokens (tenant-admin)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = _json(token.add_parser("create", help="issue a token (printed once)"))
    create.add_argument("--role", required=True, choices=["tenant-admin", "ci-signer", "auditor"])
    create.add_argument("--description", default="")
    create.add_argument("--expires-in", type=parse_seconds, help="e.g. 30d, 12h (default: never)")
    _json(token.add_parser("list", help="the tenant's tokens (never their secrets)"))
    _json(token.add_parser("revoke", help="revoke a token")).add_argument("token_id")


# --- completion ---------------------------------------------------------------------------------------


def command_words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """For each command path (space-joined, "" for the top), the words that may follow it."""
    table: dict[str, list[str]] = {}

    def walk(node: argparse.ArgumentParser, path: str) -> None:
        words: list[str] = []
        for action in node._actions:
            words.extend(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    words.append(name)
                    walk(child, f"{path} {name}".strip())
        table[path] = sorted(set(words))

    walk(parser, "")
    return table


def completion_script(shell: str) -> str:
    table = command_words(build_parser())
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items())
    )
    body = f"""_keyserver_remote() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then skip=0; continue; fi
        case "$word" in
            --url|--profile|--tenant|--token-file|--timeout) skip=1 ;;
            -*) ;;
            *) path="${{path:+$path }}$word" ;;
        esac
    done
    local words
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [[ -z "$words" ]] && COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}}
complete -o filenames -F _keyserver_remote keyserver
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body
