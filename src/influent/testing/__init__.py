"""Float64 oracles and small problems that the tests (and users' own tests) check against."""
