-- wrk script: POST a signed Tito webhook (classic scheme), a new ticket each request.
--
--   wrk -t2 -c32 -d10s -s bench/tito_post.lua http://127.0.0.1:8000/hooks/tito -- BODY_FILE SECRET TAG
--
-- BODY_FILE holds the payload with the placeholder @@SLUG@@ where the ticket's slug
-- goes; each request gets its own slug (thread, counter, TAG), so relay stores each
-- one as a new event instead of recognising a redelivery. The body is signed the way
-- Tito does it (Tito-Signature: base64 HMAC-SHA256 of the body) with libcrypto,
-- through LuaJIT's FFI: native speed, so wrk spends its time on the load.
-- done() prints one JSON line with the figures bench/run.py reads.

local ffi = require("ffi")
ffi.cdef[[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);
]]

local crypto
do  -- wrk links libcrypto itself; fall back to loading it by name
  local ok = pcall(function() return ffi.C.EVP_sha256 end)
  crypto = ok and ffi.C or ffi.load("libcrypto.so.3")
end

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

local prefix, suffix, secret, tag, path
local md = ffi.new("unsigned char[32]")
local mdlen = ffi.new("unsigned int[1]")
local b64 = ffi.new("unsigned char[64]")

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local template = f:read("*a")
  f:close()
  local at = assert(template:find("@@SLUG@@", 1, true), "no @@SLUG@@ in the body file")
  prefix, suffix = template:sub(1, at - 1), template:sub(at + 8)
  secret = args[2]
  tag = args[3] or "r"
  path = wrk.path
end

function request()
  counter = counter + 1
  local body = prefix .. string.format("%s%02d%09d", tag, id, counter) .. suffix
  crypto.HMAC(crypto.EVP_sha256(), secret, #secret, body, #body, md, mdlen)
  local n = crypto.EVP_EncodeBlock(b64, md, mdlen[0])
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Webhook-Name"] = "ticket.completed",
    ["Tito-Signature"] = ffi.string(b64, n),
  }
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
