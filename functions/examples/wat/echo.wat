;; Grove function "echo", written by hand in the WebAssembly text format.
;;
;; It shows that Grove's function ABI (functions/ABI.md) needs no Rust and no SDK: a module exports
;; memory, grove_abi_version, grove_alloc and a handler, and imports host calls from module "grove".
;; The handler publishes the event's payload, unchanged, on the topic named by the manifest's config
;; entry `topic`, and returns the payload as its response body (so a sync invoke echoes it back).
;;
;; Memory: constant strings sit below address 1024; grove_alloc is a bump allocator from 1024 up, and
;; the handler resets it when it returns, so a reused instance does not grow from event to event.
;;
;; Idempotency: stateless; a redelivered event is published again.
(module
  (import "grove" "config_get" (func $config_get (param i32 i32) (result i32)))
  (import "grove" "result" (func $result (param i32 i32) (result i32)))
  (import "grove" "publish" (func $publish (param i32 i32 i32 i32 i32) (result i32)))
  (import "grove" "output" (func $output (param i32 i32) (result i32)))
  (import "grove" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 1)

  ;; Constant strings: (address, length) pairs used below.
  (data (i32.const 0) "topic")                                        ;; 0, 5
  (data (i32.const 16) "echo: the manifest's config has no `topic`")  ;; 16, 42
  (data (i32.const 64) "echo: out of memory")                         ;; 64, 19
  (data (i32.const 96) "echo: publish failed (see the gateway log)")  ;; 96, 42

  ;; Where the bump allocator starts, and where it will allocate next.
  (global $heap_base i32 (i32.const 1024))
  (global $next (mut i32) (i32.const 1024))

  (func (export "grove_abi_version") (result i32)
    (i32.const 1))

  ;; grove_alloc(size) -> address of `size` bytes, 8-byte aligned, growing memory when needed;
  ;; 0 when size is negative or memory cannot grow.
  (func $alloc (export "grove_alloc") (param $size i32) (result i32)
    (local $start i32) (local $end i32) (local $pages i32)
    (if (i32.lt_s (local.get $size) (i32.const 0))
      (then (return (i32.const 0))))
    (local.set $start
      (i32.and (i32.add (global.get $next) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $start) (local.get $size)))
    ;; The end wrapped around the 4 GiB address space.
    (if (i32.lt_u (local.get $end) (local.get $start))
      (then (return (i32.const 0))))
    ;; Pages needed to hold [0, end): end / 64 KiB, rounded up.
    (local.set $pages
      (i32.add
        (i32.shr_u (local.get $end) (i32.const 16))
        (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq
              (memory.grow (i32.sub (local.get $pages) (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $next (local.get $end))
    (local.get $start))

  ;; Reports an error: logs the message at level error, makes it the output, frees the event's memory.
  (func $fail (param $ptr i32) (param $len i32) (result i32)
    (call $log (i32.const 0) (local.get $ptr) (local.get $len))
    (drop (call $output (local.get $ptr) (local.get $len)))
    (global.set $next (global.get $heap_base))
    (i32.const 1))

  (func (export "grove_handle")
    (param $topic_ptr i32) (param $topic_len i32) (param $payload_ptr i32) (param $payload_len i32)
    (result i32)
    (local $len i32) (local $topic i32)
    ;; The output topic from config: its length, then its bytes through `result`.
    (local.set $len (call $config_get (i32.const 0) (i32.const 5)))
    (if (i32.lt_s (local.get $len) (i32.const 0))
      (then (return (call $fail (i32.const 16) (i32.const 42)))))
    (local.set $topic (call $alloc (local.get $len)))
    (if (i32.eqz (local.get $topic))
      (then (return (call $fail (i32.const 64) (i32.const 19)))))
    (drop (call $result (local.get $topic) (local.get $len)))
    ;; Publish the payload at QoS 0; a negative code (denied, invalid, limit) fails the invocation.
    (if (i32.lt_s
          (call $publish
            (local.get $topic) (local.get $len)
            (local.get $payload_ptr) (local.get $payload_len)
            (i32.const 0))
          (i32.const 0))
      (then (return (call $fail (i32.const 96) (i32.const 42)))))
    (drop (call $output (local.get $payload_ptr) (local.get $payload_len)))
    (global.set $next (global.get $heap_base))
    (i32.const 0))
)
