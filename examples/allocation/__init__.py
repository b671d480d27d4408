"""The allocation service of the cosmic-python book, on domainbus, with no hand-written bus.

- `domain`: the commands (`CreateBatch`, `Allocate`, `ChangeBatchQuantity`), the events
  (`Allocated`, `Deallocated`, `OutOfStock`) and the `Product` aggregate;
- `adapters`: the SQLite schema, the product repository and the notifications;
- `service`: the unit of work (domainbus's, with a `products` repository) and the handlers,
  which declare their collaborators as parameters;
- `bootstrap`: one `Dispatcher(nested="queue")`, the dependencies provided once, the handlers
  registered, a logging middleware.

    from allocation import bootstrap, domain
    bus = bootstrap.bootstrap(sqlite3.connect("allocation.db"))
    bus.execute(domain.CreateBatch("b1", "LAMP", 100))
    batchref = bus.execute(domain.Allocate("o1", "LAMP", 10))   # "b1"

tests/test_allocation_example.py runs it on both backends.
"""
