-- wrk script: the client's request (POST, JSON body, same headers).
-- BENCH_BODY and BENCH_UA come from bench/run.lua.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"id":1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["User-Agent"] = os.getenv("BENCH_UA") or "bitrix24-lua"
