"""Atomic folders: the result appears whole or not at all, a failed write leaves the old copy, no temp left."""

import os

import pytest

from instructune.fileio.atomic import atomic_folder, complete_copy, old_copy


class TestAtomicFolder:
    def test_new_folder_appears_with_its_files_and_ordinary_permissions(self, tmp_path):
        final = tmp_path / "deep" / "out"
        with atomic_folder(final) as tmp:
            assert tmp.parent == final.parent and not final.exists()
            (tmp / "a.txt").write_text("a")
        assert (final / "a.txt").read_text() == "a"
        umask = os.umask(0)
        os.umask(umask)
        assert final.stat().st_mode & 0o777 == 0o777 & ~umask
        assert [p.name for p in final.parent.iterdir()] == ["out"]

    def test_failure_inside_the_block_keeps_the_old_folder_and_no_temp(self, tmp_path):
        final = tmp_path / "out"
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("old")
        with pytest.raises(ValueError):
            with atomic_folder(final) as tmp:
                (tmp / "a.txt").write_text("new")
                raise ValueError("disk full")
        assert (final / "a.txt").read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["out"]

    def test_replacing_goes_through_a_parked_copy_that_complete_copy_finds(self, tmp_path):
        final = tmp_path / "out"
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("old")
        # A kill between parking the old folder and renaming the new one leaves only the parked copy.
        os.replace(final, old_copy(final))
        assert complete_copy(final) == old_copy(final)
        with atomic_folder(final) as tmp:
            (tmp / "a.txt").write_text("new")
        assert complete_copy(final) == final and (final / "a.txt").read_text() == "new"
        assert not old_copy(final).exists()
