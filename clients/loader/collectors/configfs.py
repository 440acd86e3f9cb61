"""The Linux configfs-tsm report interface (Documentation/ABI/testing/configfs-tsm-report), as system calls.

A report is an entry (a directory) under ``/sys/kernel/config/tsm/report``. Making the directory makes
the kernel create its attributes:

- ``inblob`` (write-only, up to 64 bytes): the user data the report must carry;
- ``outblob`` (read-only): the report, generated when read after a write; format per ``provider``;
- ``auxblob`` (read-only, sev_guest): the host's certificate table (:mod:`.certtable`);
- ``provider`` (read-only): ``sev_guest`` or ``tdx_guest``, followed by a newline;
- ``generation`` (read-only, decimal): incremented by every write to ``inblob`` or any option, so that
  a reader can tell that someone else wrote between its write and its read;
- ``privlevel`` (write-only, 0-3) and ``privlevel_floor`` (read-only): the SEV-SNP VMPL to report at.

Removing the directory (rmdir) removes the report. :class:`ConfigfsTsm` makes exactly these calls and
turns their failures into typed errors; the system calls themselves are the small ``_`` methods.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Final

from clients.loader.collectors.errors import (
    TsmAttributeMissing,
    TsmMalformed,
    TsmReportFailed,
    TsmUnavailable,
)

DEFAULT_TSM_ROOT: Final = Path("/sys/kernel/config/tsm/report")
TSM_INBLOB_MAX: Final = 64
TSM_OUTBLOB_MAX: Final = 32 * 1024  # the kernel's TSM_REPORT_OUTBLOB_MAX (SZ_32K), also auxblob's limit
_SMALL_ATTRIBUTE_MAX: Final = 64  # provider, generation, privlevel_floor: a short line of text
_ENTRY_PREFIX: Final = "keyserver-loader-"


class ConfigfsTsm:
    """One configfs-tsm report directory tree (``root``), driven through plain file system calls."""

    def __init__(self, root: Path = DEFAULT_TSM_ROOT) -> None:
        self.root = root

    # --- what the collector asks for --------------------------------------------------------------------

    def create_entry(self) -> Path:
        """A new report entry of our own (a random name, so that no other agent uses it by accident)."""
        entry = self.root / f"{_ENTRY_PREFIX}{secrets.token_hex(8)}"
        try:
            self._mkdir(entry)
        except FileNotFoundError as exc:
            raise TsmUnavailable(
                f"{self.root} does not exist: this kernel has no configfs-tsm (Linux >= 6.7 with "
                "CONFIG_TSM_REPORTS), configfs is not mounted at /sys/kernel/config, or this is not an "
                "SEV-SNP/TDX guest"
            ) from exc
        except PermissionError as exc:
            raise TsmUnavailable(
                f"not allowed to create a report under {self.root}: run the loader as root"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise TsmUnavailable(
                    "the kernel has no TSM provider registered: load the sev-guest or tdx-guest driver"
                ) from exc
            raise TsmUnavailable(f"cannot create a report entry under {self.root}: {exc}") from exc
        return entry

    def read(self, entry: Path, attribute: str, limit: int) -> bytes:
        """All of an attribute (at most ``limit`` bytes, else :class:`TsmMalformed`)."""
        try:
            data = self._read_file(entry / attribute, limit + 1)
        except FileNotFoundError as exc:
            raise TsmAttributeMissing(
                f"{entry / attribute} does not exist: the kernel's configfs-tsm lacks {attribute!r} "
                "(too old a kernel for this provider?)"
            ) from exc
        except OSError as exc:
            raise TsmReportFailed(
                f"reading {attribute} failed: {os.strerror(exc.errno) if exc.errno else exc}. The TSM could "
                "not produce the report (for SEV-SNP: a disabled VMPCK or a host error; see dmesg)"
            ) from exc
        if len(data) > limit:
            raise TsmMalformed(f"{attribute} is larger than the {limit} bytes the ABI allows")
        return data

    def read_text(self, entry: Path, attribute: str) -> str:
        """A one-line text attribute without its newline (the kernel prints ``"%s\\n"``)."""
        raw = self.read(entry, attribute, _SMALL_ATTRIBUTE_MAX)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise TsmMalformed(f"{attribute} is not ASCII text: {raw!r}") from exc
        text = text.removesuffix("\n")
        if not text or not text.isprintable():
            raise TsmMalformed(f"{attribute} is not one line of text: {raw!r}")
        return text

    def read_number(self, entry: Path, attribute: str) -> int:
        text = self.read_text(entry, attribute)
        if not text.isdecimal() or not text.isascii():
            raise TsmMalformed(f"{attribute} is {text!r}, not a decimal number")
        return int(text)

    def write(self, entry: Path, attribute: str, data: bytes) -> None:
        try:
            self._write_file(entry / attribute, data)
        except FileNotFoundError as exc:
            raise TsmAttributeMissing(f"{entry / attribute} does not exist: cannot set {attribute}") from exc
        except OSError as exc:
            raise TsmReportFailed(f"the kernel refused {attribute} ({len(data)} bytes): {exc}") from exc

    def remove_entry(self, entry: Path) -> None:
        try:
            self._rmdir(entry)
        except FileNotFoundError:
            return  # already gone: nothing is left behind
        except OSError as exc:
            raise TsmReportFailed(f"cannot remove the report entry {entry}: {exc}") from exc

    # --- the system calls -------------------------------------------------------------------------------

    def _mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def _rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def _read_file(self, path: Path, limit: int) -> bytes:
        # configfs bin attributes produce the whole blob on the first read and serve the rest from it;
        # reading to EOF (or past ``limit``) gets all of it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                chunk = os.read(fd, limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write_file(self, path: Path, data: bytes) -> None:
        # configfs buffers a bin attribute's writes and hands them to the kernel on close, so the whole
        # value goes in one write and a refusal may surface at close: both are checked.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")
