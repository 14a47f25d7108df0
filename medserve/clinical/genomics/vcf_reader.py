"""Stream the records of a VCF, bgzipped VCF or BCF file, one ``RecordRead`` per data line.

The format is told by content, not by name: gzip (and so BGZF) is unwrapped, then ``BCF`` or
``##fileformat=VCF`` is expected. Text VCF (plain or compressed) is read line by line here, not by
htslib's reader, because htslib stops or silently drops a record at a bad line: every data line
gets a ``RecordRead``, either parsed or with the reason it cannot be (``"line 57"`` and "POS 'abc'
is not a non-negative integer"). A line passes when ``variant_record.parse_record`` accepts it and
htslib (cyvcf2's ``variant_from_string``, under the file's own header) parses it too; htslib prints
its own complaint about the lines it rejects on standard error. BCF is binary and already parsed,
so its records are read with cyvcf2 and turned back into text; a BCF that cannot be read further
ends with one failed record.

Blank lines are skipped without taking an ordinal. Memory holds one line at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path
from typing import Any, Literal

from medserve.clinical.genomics.variant_record import MalformedRecord, VariantRecord, parse_record
from medserve.clinical.genomics.vcf_header import VcfFormatError, VcfHeader, parse_header

_GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True, slots=True)
class RecordRead:
    """One data line (or BCF record) of the source, parsed or not."""

    ordinal: int
    """0-based position among the source's records (header and blank lines not counted)."""
    locator: str
    """``"line 57"`` (1-based line of the text, header included) or ``"record 17"`` for BCF."""
    text: str
    """The record as VCF text, without its line end (empty when it could not be read at all)."""
    record: VariantRecord | None
    """The parsed record; None when ``error`` says why it is not one."""
    error: str | None = None


class VcfSource:
    """A VCF/BCF file opened for repeated, deterministic streaming of its records.

    Construction reads only the header. Raises ``VcfFormatError`` when the file is neither VCF nor
    BCF, its header is invalid, or ``sample`` is not one of its samples; ``OSError`` when it cannot
    be opened.
    """

    def __init__(self, path: Path, *, sample: str | None = None) -> None:
        self.path = Path(path)
        self.format, self.compressed = _sniff(self.path)
        self.header = self._read_header()
        samples = self.header.samples
        if sample is not None and sample not in samples:
            listed = ", ".join(samples[:10]) + (" ..." if len(samples) > 10 else "") if samples else "none"
            raise VcfFormatError(f"{self.path}: sample {sample!r} is not in the file (its samples: {listed})")
        self.sample: str | None = sample if sample is not None else (samples[0] if samples else None)
        self.sample_column: int | None = None if self.sample is None else 9 + samples.index(self.sample)

    def records(self) -> Iterator[RecordRead]:
        """Every record in file order, with ordinals 0, 1, 2, ... (the same on every call)."""
        if self.format == "bcf":
            yield from self._bcf_records()
        else:
            yield from self._text_records()

    def _read_header(self) -> VcfHeader:
        where = str(self.path)
        if self.format == "bcf":
            import cyvcf2

            try:
                vcf = cyvcf2.VCF(str(self.path))
            except OSError as exc:
                raise VcfFormatError(f"{where}: not a readable BCF file: {exc}") from None
            try:
                return parse_header(vcf.raw_header.splitlines(), where=where)
            finally:
                vcf.close()
        with self._open_text() as handle:
            try:
                header = parse_header(_header_lines(handle, where), where=where)
            except _READ_ERRORS as exc:
                raise VcfFormatError(f"{where}: the header cannot be read: {exc}") from None
        _htslib_header(header, where)
        return header

    def _open_text(self) -> BufferedIOBase:
        if self.compressed:
            return gzip.open(self.path, "rb")
        return open(self.path, "rb")

    def _text_records(self) -> Iterator[RecordRead]:
        header_lines = len(self.header.meta) + 1
        with (
            contextlib.closing(_htslib_header(self.header, str(self.path))) as gate,
            self._open_text() as handle,
        ):
            lines = iter(handle)
            number = ordinal = 0
            while True:
                try:
                    raw = next(lines)
                except StopIteration:
                    return
                except _READ_ERRORS as exc:
                    reason = f"the file cannot be read past line {number}: {exc}"
                    yield RecordRead(ordinal, f"line {number + 1}", "", None, reason)
                    return
                number += 1
                if number <= header_lines or not raw.strip():
                    continue
                yield self._text_record(raw, ordinal, f"line {number}", gate)
                ordinal += 1

    def _text_record(self, raw: bytes, ordinal: int, locator: str, gate: Any) -> RecordRead:
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            return RecordRead(ordinal, locator, "", None, f"not UTF-8 text (byte {exc.start})")
        if text.startswith("#"):
            return RecordRead(ordinal, locator, text, None, "a header line after the #CHROM line")
        try:
            record = parse_record(text, self.header, self.sample_column)
        except MalformedRecord as exc:
            return RecordRead(ordinal, locator, text, None, str(exc))
        try:
            gate.variant_from_string(text)
        except Exception:  # cyvcf2 raises a bare Exception when htslib's vcf_parse fails
            return RecordRead(
                ordinal, locator, text, None, "htslib cannot parse the record (vcf_parse failed)"
            )
        return RecordRead(ordinal, locator, text, record)

    def _bcf_records(self) -> Iterator[RecordRead]:
        import cyvcf2

        vcf = cyvcf2.VCF(str(self.path))
        try:
            variants = iter(vcf)
            ordinal = 0
            while True:
                locator = f"record {ordinal + 1}"
                try:
                    variant = next(variants)
                except StopIteration:
                    return
                except Exception as exc:  # htslib's read errors reach Python as bare Exceptions
                    reason = f"the BCF cannot be read past record {ordinal}: {exc}"
                    yield RecordRead(ordinal, locator, "", None, reason)
                    return
                text = str(variant).rstrip("\n")
                try:
                    record = parse_record(text, self.header, self.sample_column)
                except MalformedRecord as exc:
                    yield RecordRead(ordinal, locator, text, None, str(exc))
                else:
                    yield RecordRead(ordinal, locator, text, record)
                ordinal += 1
        finally:
            vcf.close()


def _sniff(path: Path) -> tuple[Literal["vcf", "bcf"], bool]:
    """(format, gzip-compressed) from the first bytes of ``path``."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            start = handle.read(16)
    except _READ_ERRORS as exc:
        raise VcfFormatError(f"{path}: gzip data that cannot be read: {exc}") from None
    if start.startswith(b"BCF\x02"):
        return "bcf", compressed
    if start.startswith(b"##fileformat=VC"):
        return "vcf", compressed
    what = "gzip-compressed data" if compressed else "a file"
    raise VcfFormatError(f"{path}: not a VCF or BCF file ({what} starting with {start[:16]!r})")


def _header_lines(handle: Iterable[bytes], where: str) -> Iterator[str]:
    for raw in handle:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise VcfFormatError(f"{where}: the header is not UTF-8 text") from None
        yield line
        if line.startswith("#CHROM"):
            return


def _htslib_header(header: VcfHeader, where: str) -> Any:
    """A cyvcf2 writer to the null device holding ``header``: htslib's record parser."""
    import cyvcf2

    try:
        return cyvcf2.Writer.from_string(os.devnull, header.text())
    except Exception as exc:  # cyvcf2 raises a bare Exception for a header htslib rejects
        raise VcfFormatError(f"{where}: htslib cannot parse the header: {str(exc)[:200]}") from None
