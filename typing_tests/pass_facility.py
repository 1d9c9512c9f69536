"""``facility`` attributes read as the built value on instances."""

from __future__ import annotations

from typing import assert_type

from onex_compose import NodeCompute, facility


class Greeter:
    def greet(self) -> str:
        return "hello"


class MixinGreeting:
    __slots__ = ()

    @facility
    def greeter(self) -> Greeter:
        return Greeter()


class Service(NodeCompute, MixinGreeting):
    def hello(self) -> str:
        assert_type(self.greeter, Greeter)
        return self.greeter.greet()


assert_type(Service().greeter, Greeter)


if __name__ == "__main__":
    assert Service().hello() == "hello"
