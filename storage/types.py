"""Column types that behave the same on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, Numeric
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware (UTC).

    PostgreSQL keeps ``timestamptz``; SQLite stores UTC text without an offset, so
    that its date functions (``strftime``, ``julianday``) work on the column directly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: taskmon stores only timezone-aware times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text from a view or expression
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Money(TypeDecorator):
    """An exact amount with two decimal places, read back as ``Decimal``.

    PostgreSQL keeps ``NUMERIC(14, 2)``. SQLite's NUMERIC is a float in disguise, so there the
    amount is stored as integer hundredths, which SQL ``SUM`` still adds exactly.
    Floats are refused: 0.1 + 0.2 is not money.
    """

    impl = Numeric(14, 2)
    cache_ok = True
    CENT = Decimal("0.01")

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(14, 2, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError(f"float amount {value!r}: pass a Decimal or a string such as '12.30'")
        amount = Decimal(value)
        if amount != amount.quantize(self.CENT):
            raise ValueError(f"amount {value!r} has more than two decimal places")
        return int(amount.scaleb(2)) if dialect.name == "sqlite" else amount.quantize(self.CENT)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-2)
        return Decimal(value).quantize(self.CENT)
