"""Write a folder atomically: build it in a hidden sibling, then rename it into place.

Used by ``svg-jax convert`` and ``svg-jax generate`` so that an error, a full disk or Ctrl-C never leaves
a half-written output behind: until :meth:`StagingDir.publish` the destination is untouched, and with
``force`` the previous folder is swapped out only after the new one is complete.
"""

import os
import pathlib
import shutil
import tempfile


class StagingDir:
    """Context manager yielding a temporary folder next to ``dst``; :meth:`publish` moves it to ``dst``.

    Leaving the block without publishing (an exception included) deletes the temporary folder.
    """

    def __init__(self, dst: str | pathlib.Path, *, force: bool = False):
        self.dst = pathlib.Path(dst).absolute()
        self.force = force
        self.path: pathlib.Path | None = None
        self.published = False

    def __enter__(self) -> "StagingDir":
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.path = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.dst.name}.tmp-", dir=self.dst.parent))
        umask = os.umask(0)
        os.umask(umask)
        self.path.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the output gets the usual permissions
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def publish(self) -> pathlib.Path:
        """Rename the staged folder to ``dst`` (replacing it only with ``force``)."""
        assert self.path is not None, "use StagingDir as a context manager"
        old = None
        if self.dst.exists():
            if not self.force:
                raise FileExistsError(f"{self.dst} exists; pass --force to overwrite it")
            old = self.dst.with_name(f".{self.dst.name}.old-{os.getpid()}")
            os.rename(self.dst, old)
        try:
            os.rename(self.path, self.dst)
        except OSError:
            if old is not None:
                os.rename(old, self.dst)  # put the previous output back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.published = True
        return self.dst
