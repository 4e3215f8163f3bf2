"""Where a tenant's email templates come from, and what a template name may be.

A tenant's template names resolve, first match wins, in its own folder
`RULES/templates/TENANT/`, the shared folder `RULES/templates/` (the files directly in
it: its subfolders are tenants' folders), the `--templates` folders, then the templates
shipped with Orion; never in another tenant's folder, whatever the name or a symbolic
link says. `{% include %}`, `{% import %}` and `{% extends %}` resolve the same way,
through the tenant's own loader (`TenantTemplateLoader`).

A name is checked before it is looked up (`template_name_problem`): no `..`, `.` or
empty segments, no absolute path, no backslash, no control or line-break characters
(a name also goes into a mail header); any other Unicode is fine (`bienvenue-été`).

    python -c "from orion.rules.template_lookup import template_name_problem as p; print(p('../x'))"
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import jinja2

from orion.rules.limits import TEMPLATE_MAX_FILE_BYTES, TEMPLATE_MAX_NAME_CHARS

TEMPLATE_SUFFIX = ".j2"
BUILTIN_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def template_filename(name: str) -> str:
    return name if name.endswith(TEMPLATE_SUFFIX) else name + TEMPLATE_SUFFIX


def template_name_problem(name: object) -> str | None:
    """What is wrong with a template name, or None when it may be looked up."""
    if not isinstance(name, str) or not name.strip():
        return "is empty; give the template's file name without .j2"
    if len(name) > TEMPLATE_MAX_NAME_CHARS:
        return f"is longer than {TEMPLATE_MAX_NAME_CHARS} characters"
    bad = next((c for c in name if unicodedata.category(c) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        return (f"holds the control character U+{ord(bad):04X}; a template name is one line of "
                "printable text")
    if "\\" in name:
        return "holds a backslash; separate folders with /"
    if name.startswith("/") or name.startswith("~"):
        return "is an absolute path; name the template relative to the template folders"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "holds an empty, '.' or '..' folder; name the template relative to the template folders"
    return None


class TemplateSearch:
    """The folders one tenant's templates are found in, and the rule that keeps it out
    of every other tenant's folder."""

    def __init__(self, rules_dir: str | Path, tenant: str, extra: list[str | Path] | tuple = ()):
        rules_dir = Path(rules_dir)
        self.tenant = tenant
        self.shared = rules_dir / "templates"
        self.own = self.shared / tenant
        self.folders = [self.own, self.shared, *(Path(p) for p in extra), BUILTIN_TEMPLATE_DIR]
        self._shared_real = self.shared.resolve()
        self._own_real = self.own.resolve()

    def find(self, name: str) -> Path | None:
        """The file `name` stands for, or None (also for a name that is not allowed)."""
        if template_name_problem(name) is not None:
            return None
        filename = template_filename(name)
        for folder in self.folders:
            candidate = folder / filename
            try:
                if candidate.is_file() and self.reachable(candidate.resolve()):
                    return candidate
            except (OSError, ValueError):
                continue
        return None

    def reachable(self, real: Path) -> bool:
        """Whether the tenant may use the file at `real` (a resolved path): anything under
        RULES/templates/ is the tenant's own (in its folder) or shared (directly in it)."""
        try:
            inside = real.relative_to(self._shared_real)
        except ValueError:
            return True
        return len(inside.parts) == 1 or real.is_relative_to(self._own_real)

    def available(self) -> list[str]:
        """The names the tenant can use, for "did you mean" messages."""
        found = set()
        for folder in self.folders:
            if folder.is_dir():
                for path in folder.glob("*" + TEMPLATE_SUFFIX):
                    if path.is_file():
                        found.add(path.name[: -len(TEMPLATE_SUFFIX)])
        return sorted(found)


class TemplateFileTooLarge(jinja2.TemplateError):
    """A template file larger than TEMPLATE_MAX_FILE_BYTES."""


def read_template(path: Path) -> str:
    """A template file's text; TemplateFileTooLarge past TEMPLATE_MAX_FILE_BYTES."""
    with path.open("rb") as opened:
        data = opened.read(TEMPLATE_MAX_FILE_BYTES + 1)
    if len(data) > TEMPLATE_MAX_FILE_BYTES:
        raise TemplateFileTooLarge(f"{path} is larger than {TEMPLATE_MAX_FILE_BYTES:,} bytes, "
                                   "the most a template may hold")
    return data.decode("utf-8")


class TenantTemplateLoader(jinja2.BaseLoader):
    """Jinja2's loader for one tenant: every name, the email's own and those its
    includes, imports and extends ask for, resolves through the tenant's TemplateSearch."""

    def __init__(self, search: TemplateSearch):
        self.search = search

    def get_source(self, environment, template: str):
        problem = template_name_problem(template)
        if problem is not None:
            raise jinja2.TemplateNotFound(template, f"template name {template[:80]!r} {problem}")
        path = self.search.find(template)
        if path is None:
            raise jinja2.TemplateNotFound(template)
        try:
            source = read_template(path)
        except (OSError, UnicodeDecodeError) as err:
            raise jinja2.TemplateNotFound(template, f"template {template[:80]!r} cannot be read: {err}") from None
        return source, str(path), lambda: True
