"""The Comprehensive 3D SR document around a finished content tree, without highdicom's per-document
copy of that tree.

``hd.sr.Comprehensive3DSR(evidence, content, ...)`` deep-copies the whole content tree, parses the copy
back into highdicom's content item classes (kept for its ``content`` property) and searches it for the
instances it references (to check that each is in the evidence), then adds the items given. For a
chest X-ray report of 14 findings this was more than half the time it took to write the results, more
than running the model.

``comprehensive_3d_sr`` gives the same document: highdicom builds it around the root container alone
(its concept name, template and continuity; every module, the flags and the evidence sequences come
from highdicom as before: the evidence does not depend on the content), then the content items given
are added as highdicom adds them, and the references are checked here with one walk of the tree. The
SR's ``content`` property is the tree given. ``tests/unit/test_sr_document.py`` compares the document
element by element with highdicom's own build.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import highdicom as hd
from pydicom import Dataset
from pydicom.tag import Tag

_REFERENCING = ("IMAGE", "COMPOSITE")
_CONTENT_SEQUENCE = Tag("ContentSequence")


def _content_items(items: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in items:
        yield item
        yield from _content_items(item.get("ContentSequence", ()))


def _check_references(content: Dataset, evidence: Sequence[Dataset]) -> None:
    """As highdicom does: every instance an IMAGE or COMPOSITE item references must be in the evidence."""
    given = {str(ds.SOPInstanceUID) for ds in evidence}
    referenced = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in _content_items(content.get("ContentSequence", ()))
        if item.get("ValueType") in _REFERENCING
    }
    missing = sorted(referenced - given)
    if missing:
        raise ValueError(
            "No evidence was provided for the following SOP instances, which are referenced in the "
            'document content: "' + '", "'.join(missing) + '"'
        )


def comprehensive_3d_sr(
    evidence: Sequence[Dataset], content: hd.sr.ContentSequence, **options: Any
) -> hd.sr.Comprehensive3DSR:
    """``hd.sr.Comprehensive3DSR(evidence, content, **options)``, built as the module docstring says.

    ``content`` is the root content sequence (e.g. a ``MeasurementReport``), of one item.
    """
    if len(content) != 1:
        raise ValueError("the content must hold a single root item")
    root = content[0]
    _check_references(root, evidence)
    skeleton = Dataset()
    for element in root.elements():
        if element.tag != _CONTENT_SEQUENCE:
            skeleton[element.tag] = element
    skeleton.ContentSequence = []  # highdicom reads it; the content comes after
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=skeleton, **options)
    if _CONTENT_SEQUENCE in root:
        sr[_CONTENT_SEQUENCE] = root[_CONTENT_SEQUENCE]  # the items themselves, as highdicom adds them
    sr._content = content  # what highdicom keeps (a parsed copy of the same tree), for ``sr.content``
    return sr
