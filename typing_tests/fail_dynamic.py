"""What mypy rejects: attributes the base does not declare, and dynamic bases."""

from __future__ import annotations

from onex_compose import NodeCompute, compose

Service = compose(NodeCompute, ["caching"])
node = Service()
node.cache  # E: "NodeCompute" has no attribute "cache"


class Direct(compose(NodeCompute, ["caching"])):  # E: Unsupported dynamic base class "compose"
    pass


class ViaVariable(Service):  # E: Variable "fail_dynamic.Service" is not valid as a type  # E: Invalid base class "Service"
    pass


compose(NodeCompute(), ["caching"])  # E: Value of type variable "B" of "compose" cannot be "NodeCompute"
compose(NodeCompute, [1, 2])  # E: List item 0 has incompatible type "int"; expected "str"  # E: List item 1 has incompatible type "int"; expected "str"
