"""Which input files an incremental run takes: new ones, and changed ones as ``input.on_changed_file`` says."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipeline.errors import InputError
from pipeline.state.store import Seen, fingerprint

log = logging.getLogger("pipeline")


@dataclass
class Selection:
    """Called by the planner with the discovered files; remembers what it chose and why."""

    seen: dict[str, Seen]
    on_changed_file: str = "fail"
    replaced: set[str] = field(default_factory=set)     # changed files whose earlier rows are replaced
    skipped: list[str] = field(default_factory=list)    # changed files left as they were processed

    def __call__(self, files: list) -> list:
        chosen, changed = [], []
        for f in files:
            old = self.seen.get(f.path)
            if old is None:
                chosen.append(f)
            elif (old.size, old.mtime_ns) != (f.size, f.mtime_ns) and fingerprint(f.path, f.size) != old.fingerprint:
                changed.append((f, old))
        if not changed:
            return chosen
        if self.on_changed_file == "fail":
            names = ", ".join(f"{f.path} (processed by run {old.run_id})" for f, old in changed[:5])
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise InputError(
                f"{len(changed)} input file(s) changed since an earlier run processed them: {names}{more}; "
                f"nothing was written. Set input.on_changed_file: reprocess to replace their earlier rows "
                f"with their rows now, or skip to leave them as they were processed",
                file=changed[0][0].path, key="input.on_changed_file")
        if self.on_changed_file == "skip":
            for f, old in changed:
                log.warning("%s changed since run %s processed it; skipped (input.on_changed_file: skip)",
                            f.path, old.run_id)
                self.skipped.append(f.path)
            return chosen
        for f, old in changed:
            log.info("%s changed since run %s processed it; its earlier rows are replaced", f.path, old.run_id)
            self.replaced.add(f.path)
            chosen.append(f)
        order = {f.path: i for i, f in enumerate(files)}
        return sorted(chosen, key=lambda f: order[f.path])
