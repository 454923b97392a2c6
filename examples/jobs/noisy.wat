;; noisy.wat: writes 1 MiB to stdout: 16384 lines of 64 bytes ("0123…xyz" and a newline).
;; Under a smaller output limit it ends as OutputTooLarge. Exits 1 if a write fails.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  ;; 0..8: iovec; 8..12: bytes written; 64..128: one line; 4096..69632: 1024 lines (64 KiB).
  (data (i32.const 64)
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n")
  (global $block i32 (i32.const 4096))
  (global $block_len i32 (i32.const 65536))

  (func $write_all (param $ptr i32) (param $len i32)
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (i32.const 8))))
        (local.set $len (i32.sub (local.get $len) (i32.load (i32.const 8))))
        (br $again))))

  (func (export "_start")
    (local $offset i32)
    (local $round i32)
    ;; Fill the 64 KiB block with copies of the line.
    (block $filled
      (loop $fill
        (br_if $filled (i32.ge_u (local.get $offset) (global.get $block_len)))
        (memory.copy
          (i32.add (global.get $block) (local.get $offset)) (i32.const 64) (i32.const 64))
        (local.set $offset (i32.add (local.get $offset) (i32.const 64)))
        (br $fill)))
    ;; 16 blocks of 64 KiB: 1 MiB.
    (block $written
      (loop $write
        (br_if $written (i32.ge_u (local.get $round) (i32.const 16)))
        (call $write_all (global.get $block) (global.get $block_len))
        (local.set $round (i32.add (local.get $round) (i32.const 1)))
        (br $write)))))
