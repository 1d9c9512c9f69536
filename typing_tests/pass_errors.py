"""Errors carry typed data; each also is the built-in it refines."""

from __future__ import annotations

from onex_compose import (
    CapabilityConflictError,
    CompositionError,
    DependencyCycleError,
    NodeCompute,
    NotApplicableError,
    UnknownCapabilityError,
    compose,
)


def report() -> list[str]:
    lines: list[str] = []
    try:
        compose(NodeCompute, ["cachng"])
    except UnknownCapabilityError as exc:
        known: list[str] = exc.known
        suggestion: str | None = exc.suggestion
        lines += [exc.name, *known, suggestion or ""]
    except DependencyCycleError as exc:
        cycle: list[str] = exc.cycle
        lines += cycle + exc.constraints
    except CapabilityConflictError as exc:
        where: dict[str, str] = exc.where
        lines += [exc.first, exc.second, exc.kind, exc.member or "", *where]
    except NotApplicableError as exc:
        lines += [exc.node_type, *exc.applicable]
    except CompositionError as exc:
        lines += [str(e) for e in exc.errors]
    except LookupError:
        lines.append("lookup")
    return lines


if __name__ == "__main__":
    lines = report()
    assert lines[0] == "cachng", lines  # the unknown name first
    assert lines[-1] == "caching", lines  # the suggestion last
