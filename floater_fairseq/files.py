"""Files that appear whole or not at all: a kill, a full disk or an exception never leaves a
truncated checkpoint, result or dataset stage behind (only a stray temporary beside it)."""
import contextlib
import json
import os
import re
import shutil
import tempfile


@contextlib.contextmanager
def atomic_output(path: str, directory: bool = False):
    """Yield a temporary path beside ``path`` (a file, or a folder with ``directory=True``) to
    write; when the block succeeds it is flushed to disk and renamed onto ``path``, otherwise
    removed."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    prefix = "." + os.path.basename(path) + "."
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
        os.close(fd)
    try:
        yield tmp
        if not directory:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if directory and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str, text: str):
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def replace_block(path: str, name: str, content: str) -> bool:
    """Write ``content`` between the lines ``<!-- name -->`` and ``<!-- /name -->`` of the text file at
    ``path`` (README's generated tables); False, writing nothing, where the file has no such block."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = re.compile(rf"(<!-- {re.escape(name)} -->\n).*?(<!-- /{re.escape(name)} -->)", re.S)
    if not block.search(text):
        return False
    write_text(path, block.sub(lambda m: m.group(1) + content + m.group(2), text))
    return True


def write_json(path: str, data):
    write_text(path, json.dumps(data, indent=2) + "\n")


def copy_file(source: str, destination: str, buffer_size: int = 16 * 2 ** 20):
    with atomic_output(destination) as tmp, open(source, "rb") as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, buffer_size)
