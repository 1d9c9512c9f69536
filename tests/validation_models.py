"""Models that the validation tests name as ``"validation_models:Name"`` references."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

not_a_type = 42


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    customer: str
    items: list[Item]
    total: float


class Receipt(BaseModel):
    order_total: float
    lines: int


class CreateUser(BaseModel):
    action: Literal["create"]
    name: str
    age: int


class DeleteUser(BaseModel):
    action: Literal["delete"]
    user_id: int


class Created(BaseModel):
    user_id: int


class Deleted(BaseModel):
    deleted: bool


Quantities = list[int]
