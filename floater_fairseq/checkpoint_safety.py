"""Checkpoints that a kill cannot corrupt.

fairseq writes the first file of a save atomically (``torch_persistent_save``: ``.tmp`` + rename)
but then *copies* it onto ``checkpoint_last.pt`` / ``checkpoint_best.pt`` with
``PathManager.copy`` (``shutil.copyfile``), in place: a SIGKILL during that copy (an OOM kill, a
pre-empted cluster job) leaves a truncated ``checkpoint_last.pt``, and the restarted job cannot
load it. fairseq has no hook for this, so at plugin import ``PathManager.copy`` becomes an atomic
copy for local paths: a temporary file in the destination's directory, fsync, ``os.replace``.
Remote (ioPath) paths are left to fairseq. A kill leaves at most a stray ``*.tmp`` file beside the
checkpoints; the previous checkpoint stays whole.
"""
import os
import shutil
import tempfile

from fairseq.file_io import PathManager

_COPY_BUFFER = 16 * 2 ** 20
_fairseq_copy = PathManager.copy


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
        return _fairseq_copy(src_path, dst_path, overwrite=overwrite)
    if os.path.exists(dst_path) and not overwrite:
        raise FileExistsError(f"{dst_path} exists (copy without overwrite)")
    directory = os.path.dirname(os.path.abspath(dst_path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dst_path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, open(src_path, "rb") as src:
            shutil.copyfileobj(src, out, _COPY_BUFFER)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def install_atomic_checkpoint_copy():
    PathManager.copy = staticmethod(atomic_copy)


install_atomic_checkpoint_copy()
