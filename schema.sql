-- Example schema for the README demo and the e2e tests.
CREATE TABLE IF NOT EXISTS categories (
    id   bigint PRIMARY KEY,
    name text   NOT NULL
);

CREATE TABLE IF NOT EXISTS products (
    id          bigint PRIMARY KEY,
    category_id bigint REFERENCES categories (id),
    name        text   NOT NULL,
    price_cents bigint NOT NULL
);

-- FULL sends the old row on UPDATE and DELETE, so a product that moves from one
-- category to another invalidates both category listings.
ALTER TABLE products REPLICA IDENTITY FULL;

-- Written often, never cached: walbust must still let its slot advance.
CREATE TABLE IF NOT EXISTS audit_log (
    id   bigserial PRIMARY KEY,
    note text NOT NULL
);
