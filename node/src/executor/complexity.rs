//! The static complexity check: reads a wasm binary with `wasmparser`, before anything is
//! compiled, and refuses a module beyond the protocol's caps
//! ([`suanli_protocol::job::complexity`]).
//!
//! Compiling is the one part of a job that fuel does not meter, and cranelift's time and memory
//! grow with more than the module's size: 300,000 empty functions (1.2 MB) took 34 s and
//! 1.7 GB, 10,000 empty loops in one function (120 KB) 7 s, a thousand locals carried through a
//! thousand loops (18 KB) 1.2 s. So the check adds up a compile cost in units of about 3 µs of
//! compiling here: linear terms per function, operator, call, canonicalised floating-point
//! operator and loop, and quadratic ones per function for locals across joins and for loops
//! against loops (docs/protocol.md section 10.5 has the formula),
//! and refuses a module above [`MAX_COMPILE_COST`] as soon as the sum passes it: a bomb costs
//! one linear read, never a compile.
//!
//! Must never: compile, allocate in proportion to a count the module declares, or depend on
//! anything but the bytes (every node must accept or refuse a module alike).

use std::fmt;

use suanli_protocol::job::complexity::{
    BR_TABLE_TARGETS_PER_UNIT, COST_PER_CALL, COST_PER_FLOAT_OPERATOR, COST_PER_FUNCTION,
    COST_PER_LOOP, COST_PER_OPERATOR, LOCAL_JOINS_PER_UNIT, LOCALS_PER_UNIT, LOOP_JOIN_WEIGHT,
    LOOP_PAIRS_PER_UNIT, MAX_CODE_BYTES, MAX_COMPILE_COST, MAX_FUNCTION_BODY_BYTES, MAX_FUNCTIONS,
    MAX_LOCALS_PER_FUNCTION, MAX_SECTION_ENTRIES, SECTION_ENTRIES_PER_UNIT,
};
use wasmparser::{CompositeInnerType, Encoding, FunctionBody, Operator, Parser, Payload};

/// What the check measured of an accepted module (for logs and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Complexity {
    pub(super) functions: u64,
    pub(super) code_bytes: u64,
    pub(super) operators: u64,
    pub(super) cost: u64,
}

/// Why a module was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The bytes are not a wasm module (the parser's message).
    Invalid(String),
    /// Beyond a cap: which one, and the numbers.
    TooComplex(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Invalid(message) | Refusal::TooComplex(message) => f.write_str(message),
        }
    }
}

impl From<wasmparser::BinaryReaderError> for Refusal {
    fn from(error: wasmparser::BinaryReaderError) -> Self {
        Refusal::Invalid(error.to_string())
    }
}

fn too_complex(message: String) -> Refusal {
    Refusal::TooComplex(message)
}

/// Checks `binary` (a wasm module, not WAT) against every cap.
pub(super) fn check(binary: &[u8]) -> Result<Complexity, Refusal> {
    let mut checker = Checker::default();
    for payload in Parser::new(0).parse_all(binary) {
        checker.payload(payload?)?;
    }
    Ok(checker.measured)
}

#[derive(Default)]
struct Checker {
    measured: Complexity,
    /// Parameter count of each function type, by type index (at most MAX_SECTION_ENTRIES).
    type_params: Vec<u64>,
    /// Type index of each defined function, in order (at most MAX_FUNCTIONS).
    function_types: Vec<u32>,
    /// Code section entries seen so far.
    bodies: usize,
}

impl Checker {
    fn add_cost(&mut self, units: u64) -> Result<(), Refusal> {
        self.measured.cost = self.measured.cost.saturating_add(units);
        if self.measured.cost > MAX_COMPILE_COST {
            return Err(too_complex(format!(
                "module's compile cost exceeds {MAX_COMPILE_COST} units (reached {} by \
                 function {} of {}, {} operators so far)",
                self.measured.cost, self.bodies, self.measured.functions, self.measured.operators
            )));
        }
        Ok(())
    }

    /// Checks one section's entry count and charges for it.
    fn entries(&mut self, section: &str, count: u32) -> Result<(), Refusal> {
        let count = u64::from(count);
        if count > MAX_SECTION_ENTRIES {
            return Err(too_complex(format!(
                "{section} section has {count} entries, at most {MAX_SECTION_ENTRIES}"
            )));
        }
        self.add_cost(count.div_ceil(SECTION_ENTRIES_PER_UNIT))
    }

    fn payload(&mut self, payload: Payload<'_>) -> Result<(), Refusal> {
        match payload {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => Err(Refusal::Invalid(
                "a component, not a core module (only WASI preview 1 modules run)".into(),
            )),
            Payload::TypeSection(reader) => {
                self.entries("type", reader.count())?;
                for group in reader {
                    for sub_type in group?.into_types() {
                        let params = match &sub_type.composite_type.inner {
                            CompositeInnerType::Func(func) => func.params().len() as u64,
                            _ => 0,
                        };
                        // Rec groups can hold several types each: cap the total, not the groups.
                        if self.type_params.len() as u64 >= MAX_SECTION_ENTRIES {
                            return Err(too_complex(format!(
                                "type section defines more than {MAX_SECTION_ENTRIES} types"
                            )));
                        }
                        self.type_params.push(params);
                    }
                }
                Ok(())
            }
            Payload::ImportSection(reader) => self.entries("import", reader.count()),
            Payload::GlobalSection(reader) => self.entries("global", reader.count()),
            Payload::ExportSection(reader) => self.entries("export", reader.count()),
            Payload::ElementSection(reader) => self.entries("element", reader.count()),
            Payload::DataSection(reader) => self.entries("data", reader.count()),
            Payload::FunctionSection(reader) => {
                let count = u64::from(reader.count());
                if count > MAX_FUNCTIONS {
                    return Err(too_complex(format!(
                        "module defines {count} functions, at most {MAX_FUNCTIONS}"
                    )));
                }
                self.measured.functions = count;
                for type_index in reader {
                    self.function_types.push(type_index?);
                }
                self.add_cost(count.saturating_mul(COST_PER_FUNCTION))
            }
            Payload::CodeSectionStart { size, .. } => {
                let size = u64::from(size);
                if size > MAX_CODE_BYTES {
                    return Err(too_complex(format!(
                        "code section is {size} bytes, at most {MAX_CODE_BYTES}"
                    )));
                }
                self.measured.code_bytes = size;
                Ok(())
            }
            Payload::CodeSectionEntry(body) => {
                self.bodies += 1;
                let params = self
                    .function_types
                    .get(self.bodies - 1)
                    .and_then(|type_index| self.type_params.get(*type_index as usize))
                    .copied()
                    // A mismatch is for wasmtime's validation to report; count no parameters.
                    .unwrap_or(0);
                self.function(&body, params)
            }
            _ => Ok(()),
        }
    }

    fn function(&mut self, body: &FunctionBody<'_>, params: u64) -> Result<(), Refusal> {
        let index = self.bodies - 1;
        let size = body.range().len() as u64;
        if size > MAX_FUNCTION_BODY_BYTES {
            return Err(too_complex(format!(
                "function {index} is {size} bytes, at most {MAX_FUNCTION_BODY_BYTES}"
            )));
        }
        let mut locals = params;
        for declaration in body.get_locals_reader()? {
            let (count, _) = declaration?;
            locals = locals.saturating_add(u64::from(count));
            if locals > MAX_LOCALS_PER_FUNCTION {
                return Err(too_complex(format!(
                    "function {index} has more than {MAX_LOCALS_PER_FUNCTION} parameters and \
                     locals"
                )));
            }
        }
        self.add_cost(locals.div_ceil(LOCALS_PER_UNIT))?;

        let (mut joins, mut loops) = (0u64, 0u64);
        let mut operators = body.get_operators_reader()?;
        while !operators.eof() {
            let operator = operators.read()?;
            self.measured.operators += 1;
            let units = match operator {
                Operator::Loop { .. } => {
                    loops += 1;
                    COST_PER_OPERATOR + COST_PER_LOOP
                }
                Operator::Block { .. }
                | Operator::If { .. }
                | Operator::Else
                | Operator::TryTable { .. }
                | Operator::Try { .. } => {
                    joins += 1;
                    COST_PER_OPERATOR
                }
                Operator::BrTable { targets } => {
                    COST_PER_OPERATOR + u64::from(targets.len()).div_ceil(BR_TABLE_TARGETS_PER_UNIT)
                }
                ref operator if is_call_like(operator) => COST_PER_OPERATOR + COST_PER_CALL,
                ref operator if is_float(operator) => COST_PER_OPERATOR + COST_PER_FLOAT_OPERATOR,
                _ => COST_PER_OPERATOR,
            };
            // Charged as it goes, so a bomb is refused after reading only what it takes to
            // pass the cap.
            self.add_cost(units)?;
        }
        let local_joins = locals
            .saturating_mul(joins.saturating_add(loops.saturating_mul(LOOP_JOIN_WEIGHT)))
            / LOCAL_JOINS_PER_UNIT;
        let loop_pairs = loops.saturating_mul(loops) / LOOP_PAIRS_PER_UNIT;
        self.add_cost(local_joins.saturating_add(loop_pairs))
    }
}

/// Calls, and the operators compiled to a call into the runtime (bulk memory and table
/// operations, `memory.grow`).
fn is_call_like(operator: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        operator,
        O::Call { .. }
            | O::CallIndirect { .. }
            | O::CallRef { .. }
            | O::ReturnCall { .. }
            | O::ReturnCallIndirect { .. }
            | O::ReturnCallRef { .. }
            | O::MemoryGrow { .. }
            | O::MemoryCopy { .. }
            | O::MemoryFill { .. }
            | O::MemoryInit { .. }
            | O::TableCopy { .. }
            | O::TableInit { .. }
            | O::TableFill { .. }
            | O::TableGrow { .. }
    )
}

/// Floating-point operators whose result the engine canonicalises (NaN) or that it expands into
/// a range-checked sequence (conversions to integers), scalar and SIMD. Bit operations on floats
/// (`abs`, `neg`, `copysign`), comparisons, loads and stores are ordinary operators.
fn is_float(operator: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        operator,
        O::F32Ceil
            | O::F32Floor
            | O::F32Trunc
            | O::F32Nearest
            | O::F32Sqrt
            | O::F32Add
            | O::F32Sub
            | O::F32Mul
            | O::F32Div
            | O::F32Min
            | O::F32Max
            | O::F64Ceil
            | O::F64Floor
            | O::F64Trunc
            | O::F64Nearest
            | O::F64Sqrt
            | O::F64Add
            | O::F64Sub
            | O::F64Mul
            | O::F64Div
            | O::F64Min
            | O::F64Max
            | O::I32TruncF32S
            | O::I32TruncF32U
            | O::I32TruncF64S
            | O::I32TruncF64U
            | O::I64TruncF32S
            | O::I64TruncF32U
            | O::I64TruncF64S
            | O::I64TruncF64U
            | O::F32ConvertI32S
            | O::F32ConvertI32U
            | O::F32ConvertI64S
            | O::F32ConvertI64U
            | O::F32DemoteF64
            | O::F64ConvertI32S
            | O::F64ConvertI32U
            | O::F64ConvertI64S
            | O::F64ConvertI64U
            | O::F64PromoteF32
            | O::I32TruncSatF32S
            | O::I32TruncSatF32U
            | O::I32TruncSatF64S
            | O::I32TruncSatF64U
            | O::I64TruncSatF32S
            | O::I64TruncSatF32U
            | O::I64TruncSatF64S
            | O::I64TruncSatF64U
            | O::F32x4Ceil
            | O::F32x4Floor
            | O::F32x4Trunc
            | O::F32x4Nearest
            | O::F32x4Sqrt
            | O::F32x4Add
            | O::F32x4Sub
            | O::F32x4Mul
            | O::F32x4Div
            | O::F32x4Min
            | O::F32x4Max
            | O::F32x4PMin
            | O::F32x4PMax
            | O::F64x2Ceil
            | O::F64x2Floor
            | O::F64x2Trunc
            | O::F64x2Nearest
            | O::F64x2Sqrt
            | O::F64x2Add
            | O::F64x2Sub
            | O::F64x2Mul
            | O::F64x2Div
            | O::F64x2Min
            | O::F64x2Max
            | O::F64x2PMin
            | O::F64x2PMax
            | O::I32x4TruncSatF32x4S
            | O::I32x4TruncSatF32x4U
            | O::F32x4ConvertI32x4S
            | O::F32x4ConvertI32x4U
            | O::I32x4TruncSatF64x2SZero
            | O::I32x4TruncSatF64x2UZero
            | O::F64x2ConvertLowI32x4S
            | O::F64x2ConvertLowI32x4U
            | O::F32x4DemoteF64x2Zero
            | O::F64x2PromoteLowF32x4
            | O::I32x4RelaxedTruncF32x4S
            | O::I32x4RelaxedTruncF32x4U
            | O::I32x4RelaxedTruncF64x2SZero
            | O::I32x4RelaxedTruncF64x2UZero
            | O::F32x4RelaxedMadd
            | O::F32x4RelaxedNmadd
            | O::F64x2RelaxedMadd
            | O::F64x2RelaxedNmadd
            | O::F32x4RelaxedMin
            | O::F32x4RelaxedMax
            | O::F64x2RelaxedMin
            | O::F64x2RelaxedMax
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid WAT")
    }

    #[test]
    fn small_modules_pass_with_their_measurements() {
        let measured = check(&wat(r#"(module (func (export "_start") (local i32)
                 (loop (br_if 0 (local.get 0))) (call 1)) (func))"#))
        .expect("accepted");
        assert_eq!(measured.functions, 2);
        // loop, local.get, br_if, end, call, end; end.
        assert_eq!(measured.operators, 7);
        // One type and one export entry: a unit each.
        let expected = 2
            + 2 * COST_PER_FUNCTION
            + 1 // one local
            + 7 * COST_PER_OPERATOR
            + COST_PER_LOOP
            + COST_PER_CALL
            + LOOP_JOIN_WEIGHT / LOCAL_JOINS_PER_UNIT
            + 1 / LOOP_PAIRS_PER_UNIT;
        assert_eq!(measured.cost, expected);
    }

    #[test]
    fn each_cap_is_named() {
        let many_functions = format!("(module {})", "(func)".repeat(MAX_FUNCTIONS as usize + 1));
        let many_locals = format!(
            "(module (func (param i32) (local {})))",
            "i32 ".repeat(MAX_LOCALS_PER_FUNCTION as usize)
        );
        let many_globals = format!(
            "(module {})",
            "(global i32 (i32.const 0))".repeat(MAX_SECTION_ENTRIES as usize + 1)
        );
        let loops = format!(
            "(module (func {}))",
            "(loop)".repeat(MAX_COMPILE_COST as usize / 16)
        );
        let cases = [
            (many_functions, "functions, at most"),
            (many_locals, "parameters and locals"),
            (many_globals, "global section"),
            (loops, "compile cost"),
        ];
        for (text, expected) in cases {
            match check(&wat(&text)) {
                Err(Refusal::TooComplex(message)) => {
                    assert!(message.contains(expected), "{message}");
                }
                other => panic!("expected TooComplex ({expected}), got {other:?}"),
            }
        }
    }

    #[test]
    fn float_and_runtime_call_operators_weigh_more() {
        let cost = |code: &str| {
            check(&wat(&format!("(module (memory 1) (func {code}))")))
                .expect("accepted")
                .cost
        };
        // Three operators each (a constant, the operator, `drop`): only the weights differ.
        let integer = cost("(drop (i32.clz (i32.const 1)))");
        let bits = cost("(drop (f64.abs (f64.const 1)))");
        let float = cost("(drop (f64.sqrt (f64.const 1)))");
        let grow = cost("(drop (memory.grow (i32.const 1)))");
        assert_eq!(integer - cost(""), 3 * COST_PER_OPERATOR);
        assert_eq!(bits, integer);
        assert_eq!(float - integer, COST_PER_FLOAT_OPERATOR);
        assert_eq!(grow - integer, COST_PER_CALL);
    }

    #[test]
    fn garbage_is_invalid_not_too_complex() {
        assert!(matches!(
            check(b"\0asm\x01\0\0\0\x01\xff"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(check(b"not wasm"), Err(Refusal::Invalid(_))));
    }
}
