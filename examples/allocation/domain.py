"""Commands, events and the `Product` aggregate (the book's domain model, recording events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from domainbus import AggregateRoot, DomainEvent

# -- commands: what the service is asked to do (one handler each) --------------------------


@dataclass(frozen=True)
class CreateBatch:
    ref: str
    sku: str
    qty: int
    eta: date | None = None


@dataclass(frozen=True)
class Allocate:
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class ChangeBatchQuantity:
    ref: str
    qty: int


# -- events: what happened (any number of handlers) ---------------------------------------


class Allocated(DomainEvent):
    orderid: str
    sku: str
    qty: int
    batchref: str


class Deallocated(DomainEvent):
    orderid: str
    sku: str
    qty: int


class OutOfStock(DomainEvent):
    sku: str


# -- the aggregate ------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderLine:
    orderid: str
    sku: str
    qty: int


@dataclass
class Batch:
    reference: str
    sku: str
    purchased_quantity: int
    eta: date | None = None
    allocations: list[OrderLine] = field(default_factory=list)

    @property
    def allocated_quantity(self) -> int:
        return sum(line.qty for line in self.allocations)

    @property
    def available_quantity(self) -> int:
        return self.purchased_quantity - self.allocated_quantity

    def can_allocate(self, line: OrderLine) -> bool:
        return self.sku == line.sku and self.available_quantity >= line.qty

    def sort_key(self) -> tuple[bool, date]:
        """Batches in stock (no eta) first, then the earliest shipment."""
        return (self.eta is not None, self.eta or date.min)


@dataclass
class Product(AggregateRoot):
    sku: str
    batches: list[Batch] = field(default_factory=list)

    def allocate(self, line: OrderLine) -> str | None:
        """Allocate to the best batch: its reference, or None (and OutOfStock) if none fits."""
        for batch in sorted(self.batches, key=Batch.sort_key):
            if batch.can_allocate(line):
                batch.allocations.append(line)
                self.record(
                    Allocated(
                        orderid=line.orderid, sku=line.sku, qty=line.qty, batchref=batch.reference
                    )
                )
                return batch.reference
        self.record(OutOfStock(sku=line.sku))
        return None

    def change_batch_quantity(self, ref: str, qty: int) -> None:
        """Shrink a batch; the lines that no longer fit are deallocated (newest first)."""
        batch = next(b for b in self.batches if b.reference == ref)
        batch.purchased_quantity = qty
        while batch.available_quantity < 0:
            line = batch.allocations.pop()
            self.record(Deallocated(orderid=line.orderid, sku=line.sku, qty=line.qty))
