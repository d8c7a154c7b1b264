public enum LNetPlaceholder {}
