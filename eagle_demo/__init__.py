"""Eagle2 Demo: a native Eagle2 vision-language model implementation and its Gradio app."""
