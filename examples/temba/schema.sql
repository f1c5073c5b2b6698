-- Temba: a small ticketing platform (orders, their payments, and the tickets they issue).
-- Applied by examples/temba/workload.py: apply_schema() creates, reset_schema() drops and recreates.
-- No ON DELETE CASCADE: the workload deletes children explicitly so every row change is counted.

create table public.orders (
    id             uuid primary key default gen_random_uuid(),
    customer_email text not null,
    event_id       uuid not null,
    status         text not null default 'pending'
                   check (status in ('pending', 'paid', 'cancelled', 'refunded')),
    total          numeric(12,2) not null check (total >= 0),
    currency       char(3) not null check (currency ~ '^[A-Z]{3}$'),
    metadata       jsonb not null default '{}'::jsonb,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

create table public.payments (
    id              uuid primary key default gen_random_uuid(),
    order_id        uuid not null references public.orders (id),
    amount          numeric(12,2) not null check (amount >= 0),
    currency        char(3) not null check (currency ~ '^[A-Z]{3}$'),
    status          text not null default 'pending'
                    check (status in ('pending', 'succeeded', 'failed', 'refunded')),
    provider        text not null,
    provider_ref    text,
    refunded_amount numeric(12,2) not null default 0
                    check (refunded_amount >= 0 and refunded_amount <= amount),
    receipt         jsonb,  -- occasionally large (> 2 kB): stored out of line (TOAST)
    metadata        jsonb not null default '{}'::jsonb,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

create table public.tickets (
    id           uuid primary key default gen_random_uuid(),
    order_id     uuid not null references public.orders (id),
    seat         text not null,
    price        numeric(12,2) not null check (price >= 0),
    status       text not null default 'issued'
                 check (status in ('issued', 'validated', 'cancelled')),
    validated_at timestamptz,
    created_at   timestamptz not null default now(),
    check (status <> 'validated' or validated_at is not null)  -- a refund may cancel a validated ticket
);

create index payments_order_id_idx on public.payments (order_id);
create index tickets_order_id_idx on public.tickets (order_id);
