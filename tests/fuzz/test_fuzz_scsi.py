# Fuzzing of the SCSI parsers (iscsifs/scsi.py): sense data in both formats, INQUIRY, VPD pages,
# READ CAPACITY, REPORT LUNS, LUN fields and error_for_status, which must never raise.

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from . import targets
from .strategies import fuzz_settings, scsi_bytes


@fuzz_settings(800)
@given(st.one_of(scsi_bytes(), st.binary(max_size=120)))
def test_scsi_parsers(data: bytes) -> None:
    targets.run("scsi", data)
