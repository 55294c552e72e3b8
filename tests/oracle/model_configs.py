"""Small random Llama shapes for the whole-model oracle tests: GQA, odd sizes, several tiles."""
import random

FIXED = [
    # GQA, nothing a power of two, seq spanning two attention tiles
    dict(dim=48, layers=2, heads=6, kv_heads=2, vocab=101, multiple_of=32, batch=2, seq=67),
    # multi-head, ffn multiplier, longer sequence
    dict(dim=64, layers=3, heads=4, kv_heads=4, vocab=250, multiple_of=48, ffn_mult=1.3, batch=1, seq=90),
    # multi-query (one kv head)
    dict(dim=40, layers=1, heads=5, kv_heads=1, vocab=77, multiple_of=16, batch=3, seq=19),
]


def random_config(rng):
    kv = rng.randint(1, 3)
    heads = kv * rng.randint(1, 3)
    head_dim = 2 * rng.randint(1, 8)
    return dict(dim=heads * head_dim, layers=rng.randint(1, 3), heads=heads, kv_heads=kv,
                vocab=rng.randint(20, 300), multiple_of=rng.choice([8, 24, 32]),
                batch=rng.randint(1, 3), seq=rng.randint(2, 100))


def configs(seed, extra=1):
    rng = random.Random(seed)
    return FIXED + [random_config(rng) for _ in range(extra)]
