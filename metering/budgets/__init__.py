"""Prepaid credit: reservations (the store), the gateway's gate that reserves and settles, and
the sweeper that expires holds whose request never recorded usage."""
