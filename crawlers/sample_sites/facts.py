"""Public facts the sample sites ask about: the first 54 chemical elements."""

# atomic number, symbol, English name, Chinese name, category, period
ELEMENTS = [
    (1, "H", "Hydrogen", "氢", "nonmetal", 1), (2, "He", "Helium", "氦", "noble gas", 1),
    (3, "Li", "Lithium", "锂", "alkali metal", 2), (4, "Be", "Beryllium", "铍", "alkaline earth metal", 2),
    (5, "B", "Boron", "硼", "metalloid", 2), (6, "C", "Carbon", "碳", "nonmetal", 2),
    (7, "N", "Nitrogen", "氮", "nonmetal", 2), (8, "O", "Oxygen", "氧", "nonmetal", 2),
    (9, "F", "Fluorine", "氟", "halogen", 2), (10, "Ne", "Neon", "氖", "noble gas", 2),
    (11, "Na", "Sodium", "钠", "alkali metal", 3), (12, "Mg", "Magnesium", "镁", "alkaline earth metal", 3),
    (13, "Al", "Aluminium", "铝", "post-transition metal", 3), (14, "Si", "Silicon", "硅", "metalloid", 3),
    (15, "P", "Phosphorus", "磷", "nonmetal", 3), (16, "S", "Sulfur", "硫", "nonmetal", 3),
    (17, "Cl", "Chlorine", "氯", "halogen", 3), (18, "Ar", "Argon", "氩", "noble gas", 3),
    (19, "K", "Potassium", "钾", "alkali metal", 4), (20, "Ca", "Calcium", "钙", "alkaline earth metal", 4),
    (21, "Sc", "Scandium", "钪", "transition metal", 4), (22, "Ti", "Titanium", "钛", "transition metal", 4),
    (23, "V", "Vanadium", "钒", "transition metal", 4), (24, "Cr", "Chromium", "铬", "transition metal", 4),
    (25, "Mn", "Manganese", "锰", "transition metal", 4), (26, "Fe", "Iron", "铁", "transition metal", 4),
    (27, "Co", "Cobalt", "钴", "transition metal", 4), (28, "Ni", "Nickel", "镍", "transition metal", 4),
    (29, "Cu", "Copper", "铜", "transition metal", 4), (30, "Zn", "Zinc", "锌", "transition metal", 4),
    (31, "Ga", "Gallium", "镓", "post-transition metal", 4), (32, "Ge", "Germanium", "锗", "metalloid", 4),
    (33, "As", "Arsenic", "砷", "metalloid", 4), (34, "Se", "Selenium", "硒", "nonmetal", 4),
    (35, "Br", "Bromine", "溴", "halogen", 4), (36, "Kr", "Krypton", "氪", "noble gas", 4),
    (37, "Rb", "Rubidium", "铷", "alkali metal", 5), (38, "Sr", "Strontium", "锶", "alkaline earth metal", 5),
    (39, "Y", "Yttrium", "钇", "transition metal", 5), (40, "Zr", "Zirconium", "锆", "transition metal", 5),
    (41, "Nb", "Niobium", "铌", "transition metal", 5), (42, "Mo", "Molybdenum", "钼", "transition metal", 5),
    (43, "Tc", "Technetium", "锝", "transition metal", 5), (44, "Ru", "Ruthenium", "钌", "transition metal", 5),
    (45, "Rh", "Rhodium", "铑", "transition metal", 5), (46, "Pd", "Palladium", "钯", "transition metal", 5),
    (47, "Ag", "Silver", "银", "transition metal", 5), (48, "Cd", "Cadmium", "镉", "transition metal", 5),
    (49, "In", "Indium", "铟", "post-transition metal", 5), (50, "Sn", "Tin", "锡", "post-transition metal", 5),
    (51, "Sb", "Antimony", "锑", "metalloid", 5), (52, "Te", "Tellurium", "碲", "metalloid", 5),
    (53, "I", "Iodine", "碘", "halogen", 5), (54, "Xe", "Xenon", "氙", "noble gas", 5),
]
CATEGORIES = sorted({e[4] for e in ELEMENTS})
CATEGORIES_ZH = {
    "nonmetal": "非金属", "noble gas": "稀有气体", "alkali metal": "碱金属", "alkaline earth metal": "碱土金属",
    "metalloid": "类金属", "halogen": "卤素", "post-transition metal": "后过渡金属", "transition metal": "过渡金属",
}
