"""``explain()``: what a composed or hand-written class is made of, and why.

For every capability: what requires it ("metrics: required by caching"), whether it was asked
for, pulled in as a dependency or added to a hand-written class; the final order; which
capability provides each public name and what it overrides; the applied resolutions; and, for an
instance, where each capability's configuration came from. As text, as a JSON-able dict, and as
Graphviz DOT.
"""

from __future__ import annotations

import json
from typing import Any

from onex_compose import _redact
from onex_compose._build import COMPOSED_MODULE, Composition

__all__ = ["Explanation", "explain"]


class Explanation:
    """The report returned by :func:`explain`; ``str()`` gives the text form.

    Attributes:
        data: the JSON-able dict form (also :meth:`to_dict`).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return self.data

    def to_json(self, **kwargs: Any) -> str:
        """The report as JSON text."""
        return json.dumps(self.data, indent=kwargs.pop("indent", 2), **kwargs)

    def to_dot(self) -> str:
        """The dependency graph as Graphviz DOT (edges point from dependency to dependent)."""
        lines = [f'digraph "{self.data["class"]}" {{', "  rankdir=LR;"]
        lines.append(f'  "{self.data["base"]}" [shape=box, style=bold];')
        for cap in self.data["capabilities"]:
            style = "" if cap["why"] == "requested" else ", style=dashed"
            lines.append(f'  "{cap["name"]}" [shape=ellipse{style}];')
        for a, b, why in self.data["edges"]:
            lines.append(f'  "{a}" -> "{b}" [label="{why}"];')
        for cap in self.data["capabilities"]:
            lines.append(f'  "{cap["name"]}" -> "{self.data["base"]}" [style=dotted, arrowhead=none];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        d = self.data
        out = [f"{d['class']} ({d['style']}, base {d['base']})", "capabilities (in order):"]
        for i, cap in enumerate(d["capabilities"], 1):
            line = f"  {i}. {cap['name']}: {cap['why']}"
            if cap.get("config_source"):
                line += f" [config: {cap['config_source']}]"
            out.append(line)
        if d["providers"]:
            out.append("public names:")
            for member, info in d["providers"].items():
                extra = f" (overrides {', '.join(info['overrides'])})" if info["overrides"] else ""
                out.append(f"  {member}: {info['capability']}{extra}")
        out.append("resolutions: " + ("; ".join(d["resolutions"]) if d["resolutions"] else "none"))
        if d.get("pipeline"):
            kind = f" ({d['pipeline_kind']} process)" if d.get("pipeline_kind") else ""
            out.append("process() pipeline (outermost first): " + " -> ".join(d["pipeline"])
                       + kind)
        notes = [f"  {c['name']}: {c['note']}" for c in d["capabilities"] if c.get("note")]
        if notes:
            out.append("notes:")
            out.extend(notes)
        return "\n".join(out)

    def __repr__(self) -> str:
        names = ", ".join(c["name"] for c in self.data["capabilities"])
        return f"<Explanation of {self.data['class']}: {names}>"


def _how_listed(cls: type, comp: Composition, name: str) -> str:
    """``listed in the class's bases`` or ``inherited from <the base that brought it>``."""
    try:
        mixin = comp.spec(name).mixin
    except KeyError:
        return "listed in the class's bases"
    for base in cls.__bases__:
        if base is mixin:
            return "listed in the class's bases"
        if issubclass(base, mixin):
            return f"inherited from {base.__qualname__}"
    return "listed in the class's bases"


def explain(obj_or_cls: Any) -> Explanation:
    """Explain a composed or hand-written node class (or an instance of one).

    Example:
        >>> from onex_compose import NodeCompute, compose, explain
        >>> print(explain(compose(NodeCompute, ["caching"])))  # doctest: +ELLIPSIS
        NodeCompute[caching,metrics] (composed, base NodeCompute)
        capabilities (in order):
          1. metrics: required by caching
          2. caching: requested
        ...
    """
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    comp = getattr(cls, "__composition__", None)
    if not isinstance(comp, Composition):
        from onex_compose.exceptions import ConfigurationError

        raise ConfigurationError(
            f"explain() takes a node class or instance, got {cls.__qualname__}, which has no "
            "__composition__ (it is not a NodeCoreBase subclass).")
    sources: dict[str, str] = {}
    if not isinstance(obj_or_cls, type):
        init = getattr(obj_or_cls, "_onex_init", None)
        if init is not None:
            sources = init[2] or dict.fromkeys(comp.capabilities, "defaults")
    caps = []
    for name in comp.capabilities:
        by = comp.required_by.get(name, ())
        if name in comp.added:
            why = f"added automatically: required by {', '.join(by)}"
        elif by:
            why = f"required by {', '.join(by)}"
        elif comp.style == "hand-written":
            why = _how_listed(cls, comp, name)
        else:
            why = "requested"
        entry: dict[str, Any] = {"name": name, "why": why, "required_by": list(by)}
        if name in sources:
            entry["config_source"] = sources[name]
        note = getattr(cls, f"_explain_{name}", None)  # a capability's own line, e.g. retry's
        if note is not None:
            # a note may quote configuration (a backend URL...): through the one scrubber
            entry["note"] = _redact.scrub(note(None if isinstance(obj_or_cls, type)
                                               else obj_or_cls))
        caps.append(entry)
    providers = {m: {"capability": c, "overrides": list(comp.overrides.get(m, ()))}
                 for m, c in sorted(comp.providers.items())}
    pipeline = getattr(cls, "__onex_pipeline__", None)
    base = comp.base
    if comp.style == "hand-written":  # show the node base the mixins were added to
        base = next((b for b in cls.__bases__ if "__onex_capability__" not in vars(b)), base)
    data = {
        # a composed class's qualname carries @module/~registry for pickling; show the readable name
        "class": cls.__name__ if cls.__module__ == COMPOSED_MODULE else cls.__qualname__,
        "base": base.__qualname__,
        "style": comp.style,
        "order": list(comp.capabilities),
        "capabilities": caps,
        "providers": providers,
        "resolutions": comp.resolutions,
        "added": list(comp.added),
        "edges": [list(e) for e in comp.edges],
        "pipeline": list(pipeline) if pipeline else [],
        # "sync" (a plain def process, guarded by the _guard_sync_* hooks), "async", or None
        "pipeline_kind": getattr(cls, "__onex_pipeline_kind__", None) if pipeline else None,
    }
    return Explanation(data)
